"""Bad input to `distgnn partition create`: one clear line, exit 2, no output directory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn.cli import main
from tests.conftest import write_parquet


def _good(tmp: Path) -> Path:
    return write_parquet(tmp / "good.parquet", user_id=np.array([1, 2, 3, 1]), item_id=np.array([7, 8, 9, 8]))


def _case(name: str, tmp: Path) -> tuple[list[str], str]:
    """Build the bad input for one case; return (extra args, expected words in the message)."""
    good = _good(tmp)
    if name == "missing path":
        return ["--train", str(tmp / "nope.parquet")], "does not exist"
    if name == "missing column":
        return ["--train", str(good), "--user-col", "customer"], "column 'customer' not found"
    if name == "null ids":
        p = tmp / "nulls.parquet"
        pq.write_table(pa.table({"user_id": pa.array([1, None, 3], pa.int64()), "item_id": [1, 2, 3]}), p)
        return ["--train", str(p)], "null ids"
    if name == "negative ids":
        return ["--train", str(write_parquet(tmp / "neg.parquet", user_id=np.array([1, -4]),
                                             item_id=np.array([1, 2])))], "negative ids"
    if name == "wrong type":
        return ["--train", str(write_parquet(tmp / "f.parquet", user_id=np.array([1.5, 2.0]),
                                             item_id=np.array([1, 2])))], "has type double"
    if name == "empty table":
        p = tmp / "empty.parquet"
        pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64())}), p)
        return ["--train", str(p)], "no rows"
    if name == "zero-byte file":
        p = tmp / "zero.parquet"
        p.write_bytes(b"")
        return ["--train", str(p)], "empty"
    if name == "num-parts < 1":
        return ["--train", str(good), "--num-parts", "0"], "--num-parts must be >= 1"
    if name == "num-parts > nodes":
        return ["--train", str(good), "--num-parts", "50"], "larger than the number of nodes"
    if name == "truncated parquet":
        p = tmp / "trunc.parquet"
        p.write_bytes(good.read_bytes()[:-20])
        return ["--train", str(p)], "cannot read"
    if name == "corrupt parquet":
        p = tmp / "garbage.parquet"
        p.write_bytes(b"PAR1" + bytes(range(256)) * 4)
        return ["--train", str(p)], "cannot read"
    if name == "test with wrong id type":
        t = write_parquet(tmp / "t.parquet", user_id=np.array(["a"]), item_id=np.array(["b"]))
        return ["--train", str(good), "--test", str(t)], "same type"
    raise AssertionError(name)


CASES = ["missing path", "missing column", "null ids", "negative ids", "wrong type", "empty table",
         "zero-byte file", "num-parts < 1", "num-parts > nodes", "truncated parquet", "corrupt parquet",
         "test with wrong id type"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_one_line_exit_2_no_output(name, tmp_path, capsys):
    args, expected = _case(name, tmp_path)
    out = tmp_path / "out"
    argv = ["partition", "create", "--num-parts", "2", "--out", str(out), "--quiet"] + args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    if name == "num-parts > nodes":
        # found only after ingest: the ingest stage stays checkpointed for a --resume with fewer parts
        assert left == [".out.partition-scratch"] and "--resume" in err
    else:
        assert not left


def test_non_empty_output_without_overwrite_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["partition", "create", "--train", str(_good(tmp_path)), "--num-parts", "1",
                 "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_cli_process_prints_no_traceback(tmp_path):
    """The installed console script, end to end: one line on stderr, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "distgnn.cli", "partition", "create", "--train",
                           str(tmp_path / "missing"), "--num-parts", "2", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
