"""One exception type for problems the user can fix.

Every bad input (missing path, wrong column, bad config, impossible option) raises ``UserError``
with one sentence naming the problem and the fix. The CLI prints it as one line and exits 2; no
traceback, because a traceback tells a user nothing they can act on.
"""


class UserError(Exception):
    """A problem with the user's input or options; the message says what to fix."""


class RayCallError(RuntimeError):
    """A remote call missed its deadline, or the actor/task serving it died.

    The message is one line naming the actor (or task) and the deadline, like a ``UserError``; it
    is a ``RuntimeError`` because it is not the user's input that is wrong, and because Ray Train
    treats any exception in a worker as a failure to restart from (``FailureConfig``). The CLI
    prints it as one line with exit code 1.
    """


class StaleGenerationError(RayCallError):
    """A parameter-server shard restarted since the caller learned its generation.

    The restarted shard reloaded its rows from the last committed checkpoint (or, before the first
    one, drew its initial rows), so an update or read meant for the old incarnation must not land
    on it: the worker raises this, Ray Train restarts the worker group, and every worker rolls back
    to the last checkpoint, exactly as after a worker failure (docs/architecture.md D30).
    """
