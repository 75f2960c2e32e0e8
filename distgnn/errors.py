"""One exception type for problems the user can fix.

Every bad input (missing path, wrong column, bad config, impossible option) raises ``UserError``
with one sentence naming the problem and the fix. The CLI prints it as one line and exits 2; no
traceback, because a traceback tells a user nothing they can act on.
"""


class UserError(Exception):
    """A problem with the user's input or options; the message says what to fix."""
