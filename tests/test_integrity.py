"""Partition files are checked against their manifest sha256 the first time a process opens them:
a changed byte (same size, so the size check cannot see it) is one line naming the file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distgnn.cli import main
from distgnn.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _flip_last_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the column data, the size stays the same
    path.write_bytes(bytes(data))


@pytest.fixture
def parts(logs):
    out = logs["tmp"] / "parts"
    assert main(["partition", "create", "--train", str(logs["train"]), "--test", str(logs["test"]),
                 "--valid-fraction", "0.1", "--num-parts", "2", "--out", str(out)]) == 0
    return out


def test_a_flipped_byte_in_an_edges_file_is_named(parts):
    from distgnn.graph_store import LocalGraphStore

    LocalGraphStore(parts)  # intact: loads
    _flip_last_data_byte(parts / "part-00001" / "edges.parquet")
    with pytest.raises(UserError, match=r"part-00001/edges.parquet does not match the sha256"):
        LocalGraphStore(parts)


def test_training_cli_refuses_a_tampered_id_map_in_one_line(parts, tmp_path):
    _flip_last_data_byte(parts / "id_map" / "item.parquet")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  partitions: {parts}\nmodel:\n  dim: 8\n  hidden: 8\n  heads: 1\n"
                   f"train:\n  epochs: 1\n  batch_size: 64\n  threads: 1\n  eval_every: 0\n")
    p = subprocess.run([sys.executable, "-m", "distgnn.cli", "train", "--config", str(cfg), "--out",
                        str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "id_map/item.parquet does not match the sha256" in lines[0]
    assert "Traceback" not in p.stderr


def test_a_changed_checkpoint_file_is_named_on_load(parts, tmp_path):
    """Checkpoint files (format v2) are checked against the checkpoint manifest's sha256 on first
    open: evaluate refuses a damaged shard file in one line, and reads an intact one."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  partitions: {parts}\nmodel:\n  dim: 8\n  hidden: 8\n  heads: 1\n"
                   f"train:\n  epochs: 1\n  batch_size: 64\n  threads: 1\n  eval_every: 0\n")
    run = tmp_path / "run"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "distgnn.cli", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    assert cli("train", "--config", str(cfg), "--out", str(run), "--max-steps", "2").returncode == 0
    assert cli("evaluate", "--run", str(run)).returncode == 0
    (ckpt,) = (run / "checkpoints").glob("step-*")
    _flip_last_data_byte(ckpt / "embeddings" / "item-00001.parquet")
    p = cli("evaluate", "--run", str(run))
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "embeddings/item-00001.parquet does not match the sha256" in lines[0]
