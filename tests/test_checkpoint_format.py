"""Checkpoint format v2: the spec (docs/format.md and distgnn/checkpoint.py's docstring) against the
code and a written checkpoint; per-partition files; the positional and the re-keying load; verify;
and the committed v1 fixture still loading (local backend; the Ray PS side is in test_ray_ps.py)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distgnn import checkpoint as ckpt
from distgnn import format as fmt
from distgnn.cli import main
from distgnn.config import load_config
from distgnn.embedding_store import LocalEmbeddingStore
from distgnn.errors import UserError
from distgnn.trainer import Trainer
from tests.ckpt_helpers import (V1_CKPT, V1_DIM, V1_PARTS, V1_RUN, assert_state_matches, checkpoint_rows,
                                repartition, save_checkpoint)

SPEC = Path(__file__).resolve().parents[1] / "docs" / "format.md"


@pytest.fixture(scope="module")
def parts3(tmp_path_factory) -> Path:
    return repartition(tmp_path_factory.mktemp("p3") / "parts", 3)


def _trained_store(optimizer: str = "adam", seed: int = 0) -> LocalEmbeddingStore:
    """A store over the fixture's partitions with some rows (and their optimizer state) updated."""
    num_nodes = fmt.PartitionBook.from_manifest(fmt.load_manifest(V1_PARTS)).num_nodes
    store = LocalEmbeddingStore(num_nodes, V1_DIM, optimizer=optimizer, lr=0.1, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        store.push(torch.randint(0, num_nodes, (40,), generator=gen), torch.randn(40, V1_DIM, generator=gen))
    return store


def _generic(relpath: str) -> str:
    return re.sub(r"-\d{5}\.parquet$", "-00000.parquet", relpath)


def _section(text: str, heading: str) -> str:
    """The lines under ``heading`` up to the next heading."""
    return text.split(heading + "\n", 1)[1].split("\n#", 1)[0]


# --- the spec against the code ------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_spec_matches_code_and_a_written_checkpoint(tmp_path, optimizer):
    store = _trained_store(optimizer)
    path = save_checkpoint(store, tmp_path / "run", V1_PARTS)
    written = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    book = fmt.PartitionBook.from_manifest(fmt.load_manifest(V1_PARTS))

    docs = SPEC.read_text().split("\n## Checkpoint format\n", 1)[1]
    doc = ckpt.__doc__
    assert f"Version {ckpt.VERSION}." in docs and f"format version {ckpt.VERSION}" in doc.splitlines()[0]

    # layout: docs/format.md, the docstring and the written directory name the same files
    layout = re.search(r"### Checkpoint layout\n\n```\n(.*?)```", docs, re.S).group(1)
    doc_layout = doc.split("RUN/checkpoints/step-000001234/\n", 1)[1].split("RUN/checkpoints/best.json")[0]
    in_docs = {_generic(e) for e in re.findall(r"^CKPT/(\S+)", layout, re.M)}
    in_doc = {_generic(e) for e in re.findall(r"^    (\S+)", doc_layout, re.M)}
    assert in_docs == in_doc == {_generic(rel) for rel in written}
    assert {rel for rel in written if rel.startswith("embeddings/")} == {
        ckpt.shard_relpath(t, p) for p in range(book.num_parts) for t in fmt.NTYPES}

    # embedding file columns: the docs' table is the code's, and the files have them
    table = _section(docs, "### Embedding files `embeddings/{user,item}-PPPPP.parquet`")
    spec_cols = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", table, re.M))
    assert list(spec_cols) == list(ckpt.EMBEDDING_COLUMNS)
    assert f"row groups of at most {ckpt.ROW_GROUP_ROWS:,} rows" in docs
    for name, typ in ckpt.EMBEDDING_COLUMNS.items():
        assert (spec_cols[name].startswith("int64 or string") if typ is None else spec_cols[name] == typ), name
        assert f"``{name}``" in doc, name
    id_type = pq.read_schema(V1_PARTS / fmt.id_map_path("user")).field("orig_id").type
    code_types = {None: id_type, "int64": pa.int64(), ckpt.VECTOR: pa.list_(pa.float32(), V1_DIM)}
    for rel in written:
        if rel.endswith(".parquet"):
            schema = pq.read_schema(path / rel)
            assert schema.names == ["orig_id", *ckpt.STATE_NAMES[optimizer]], rel
            for name in schema.names:
                assert schema.field(name).type == code_types[ckpt.EMBEDDING_COLUMNS[name]], (rel, name)
            assert json.loads(schema.metadata[b"distgnn"]) == {"optimizer": optimizer, "dim": V1_DIM}

    # manifest.json: keys of the docs' block and of the docstring are the written ones
    block = re.search(r"### Checkpoint `manifest.json`\n\n```\n(.*?)```", docs, re.S).group(1)
    assert set(re.findall(r'^  "(\w+)"', block, re.M)) == set(manifest)
    assert f'"format": "{ckpt.FORMAT}"' in block and f'"version": {ckpt.VERSION}' in block
    emb = manifest["embeddings"]
    words = set(emb) | set(ckpt.SHARD_KEYS) | set(emb["partitions"]) | set(emb["partitions"]["id_map_sha256"]) \
        | set(ckpt.STATE_NAMES)
    for text in (block, doc.split("``manifest.json`` is::", 1)[1].split("``files`` lists")[0]):
        emb_text = text.split('"embeddings":', 1)[1].split('"files":', 1)[0]
        assert set(re.findall(r'"([\w/.]+)"', emb_text)) == words
        files_text = text.split('"files":', 1)[1]
        assert set(re.findall(r'"(\w+)"', files_text)) == {"rows", "bytes", "sha256"}
    assert all(list(s) == list(ckpt.SHARD_KEYS) for s in emb["shards"])
    assert (emb["optimizer"], emb["dim"], emb["num_shards"]) == (optimizer, V1_DIM, book.num_parts)
    assert set(manifest["files"]) == set(written) - {ckpt.MANIFEST, ckpt.MARKER}
    assert all(set(r) == {"rows", "bytes", "sha256"} for r in manifest["files"].values())
    assert manifest["files"]["dense.pt"]["rows"] is None


def test_each_partition_file_holds_its_rows_in_gid_order(tmp_path):
    store = _trained_store()
    path = save_checkpoint(store, tmp_path / "run", V1_PARTS)
    book = fmt.PartitionBook.from_manifest(fmt.load_manifest(V1_PARTS))
    for ntype in fmt.NTYPES:
        id_map = fmt.read_table(V1_PARTS, fmt.id_map_path(ntype))
        for p in range(book.num_parts):
            start, count = book.id_map_rows(p, ntype)
            t = pq.read_table(path / ckpt.shard_relpath(ntype, p))
            assert t.column("orig_id").to_pylist() == id_map.column("orig_id").to_pylist()[start:start + count]
            first = book.ntype_gid_start(p, ntype)
            weight = t.column("weight").combine_chunks().flatten().to_numpy().reshape(-1, V1_DIM)
            np.testing.assert_array_equal(weight, store.weight[first:first + count].numpy())
            assert path.joinpath("manifest.json").read_text().count(ckpt.shard_relpath(ntype, p)) == 1


# --- loading ------------------------------------------------------------------------------------
def test_same_partitions_read_only_their_own_two_files(tmp_path, parts3):
    store = _trained_store()
    path = save_checkpoint(store, tmp_path / "run", V1_PARTS)
    book = fmt.PartitionBook.from_manifest(fmt.load_manifest(V1_PARTS))
    for ntype in fmt.NTYPES:  # partition 1's files are gone: partition 0 still loads (positionally)
        (path / ckpt.shard_relpath(ntype, 1)).unlink()
    names = ckpt.state_names("adam")
    rows = ckpt.load_partition_rows(path, V1_PARTS, 0, names)
    a, b = int(book.gid_start[0]), int(book.gid_end[0])
    for name in names:
        np.testing.assert_array_equal(rows[name], store.state_dict()[name][a:b].numpy())
    assert list(ckpt.load_partition_rows(path, V1_PARTS, 0)) == ["weight"]  # the inference call
    # another partitioning must re-key, which reads every shard's files: partition 1's are missing
    with pytest.raises(UserError, match=r"cannot read checkpoint embeddings .*user-00001\.parquet"):
        ckpt.load_partition_rows(path, parts3, 0, names)


def test_same_ranges_but_other_id_maps_are_rekeyed(tmp_path):
    """Equal shard ranges are not enough for a positional read: here the users are assigned to
    other gids (the id map reversed, as another partitioning with equal sizes would), so the
    checkpoint's id-map sha256 differ from the partition manifest's and rows follow orig ids."""
    store = _trained_store()
    path = save_checkpoint(store, tmp_path / "run", V1_PARTS)
    parts = tmp_path / "parts"
    shutil.copytree(V1_PARTS, parts)
    rel = fmt.id_map_path("user")
    t = pq.read_table(parts / rel)
    pq.write_table(t.set_column(0, "orig_id", t.column("orig_id").combine_chunks()[::-1]), parts / rel)
    manifest = json.loads((parts / fmt.MANIFEST).read_text())
    manifest["files"][rel].update(bytes=(parts / rel).stat().st_size, sha256=fmt.sha256_file(parts / rel))
    (parts / fmt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.same_partitions(json.loads((path / ckpt.MANIFEST).read_text()), fmt.load_manifest(V1_PARTS))
    assert not ckpt.same_partitions(json.loads((path / ckpt.MANIFEST).read_text()), manifest)
    names = ckpt.state_names("adam")
    rows = [ckpt.load_partition_rows(path, parts, p, names) for p in range(2)]
    state = {n: np.concatenate([r[n] for r in rows]) for n in names}
    assert_state_matches(state, parts, checkpoint_rows(path))
    assert not np.array_equal(state["weight"], store.weight.numpy())


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_other_number_of_partitions_rekeys_by_orig_id(tmp_path, parts3, optimizer):
    store = _trained_store(optimizer, seed=3)
    path = save_checkpoint(store, tmp_path / "run", V1_PARTS)
    book3 = fmt.PartitionBook.from_manifest(fmt.load_manifest(parts3))
    names = ckpt.state_names(optimizer)
    stitched = {n: [] for n in names}
    for p in range(book3.num_parts):
        rows = ckpt.load_partition_rows(path, parts3, p, names)
        assert len(rows["weight"]) == book3.gid_end[p] - book3.gid_start[p]
        for n in names:
            stitched[n].append(rows[n])
    state = {n: np.concatenate(v) for n, v in stitched.items()}
    assert_state_matches(state, parts3, checkpoint_rows(path))
    assert (state["sum_sq" if optimizer == "adagrad" else "step"] != 0).any()
    # the same through a whole store, and back: written over 3 partitions, the rows are equal
    other = LocalEmbeddingStore(book3.num_nodes, V1_DIM, optimizer=optimizer, seed=9)
    other.load(path, parts3)
    assert_state_matches({k: v.numpy() for k, v in other.state_dict().items()}, parts3, checkpoint_rows(path))
    path3 = save_checkpoint(other, tmp_path / "run3", parts3)
    assert_state_matches({k: v.numpy() for k, v in store.state_dict().items()}, V1_PARTS, checkpoint_rows(path3))


def test_rows_missing_from_the_checkpoint_name_it(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("test", "valid"):
        shutil.copy(V1_PARTS.parent / "raw" / f"{split}.parquet", raw)
    train = pq.read_table(V1_PARTS.parent / "raw" / "train.parquet")
    extra = pa.table({"user_id": ["new-user"], "item_id": [train.column("item_id")[0].as_py()]})
    pq.write_table(pa.concat_tables([train, extra]), raw / "train.parquet")
    from partition.pipeline import CreateOptions, create
    create(CreateOptions(train=str(raw / "train.parquet"), test=str(raw / "test.parquet"),
                         valid=str(raw / "valid.parquet"), out=str(tmp_path / "parts"), num_parts=2,
                         method="random", progress=False))
    store = LocalEmbeddingStore(101, V1_DIM, optimizer="adam")
    with pytest.raises(UserError, match=rf"checkpoint {re.escape(str(V1_CKPT))} has no embedding row "
                                        rf"for 1 of .*'new-user'"):
        store.load(V1_CKPT, tmp_path / "parts")


def test_other_optimizer_or_dim_is_refused(tmp_path):
    path = save_checkpoint(_trained_store("adam"), tmp_path / "run", V1_PARTS)
    with pytest.raises(UserError, match="holds adam embeddings of dim 8"):
        LocalEmbeddingStore(100, V1_DIM, optimizer="adagrad").load(path, V1_PARTS)
    with pytest.raises(UserError, match="holds adam embeddings of dim 8"):
        ckpt.load_partition_rows(path, V1_PARTS, 0, dim=16)
    with pytest.raises(UserError, match="holds adam embeddings of dim 8"):  # v1: from the files
        ckpt.load_partition_rows(V1_CKPT, V1_PARTS, 0, optimizer="adagrad")
    with pytest.raises(UserError, match="has no column 'sum_sq'"):
        ckpt.load_partition_rows(path, V1_PARTS, 1, ["weight", "sum_sq"])


def test_read_id_map_slice_reads_only_the_row_groups_of_the_slice(tmp_path):
    (tmp_path / "id_map").mkdir()
    ids = pa.table({"orig_id": pa.array([f"u{i}" for i in range(30)]), "gid": pa.array(np.arange(30) + 100)})
    pq.write_table(ids, tmp_path / fmt.id_map_path("user"), row_group_size=7)
    meta = pq.read_metadata(tmp_path / fmt.id_map_path("user"))
    assert fmt.row_groups_for(meta, 10, 9) == ([1, 2], 7)
    assert fmt.row_groups_for(meta, 0, 7) == ([0], 0)
    assert fmt.row_groups_for(meta, 28, 2) == ([4], 28)
    assert fmt.row_groups_for(meta, 5, 0) == ([], 5)
    t = fmt.read_id_map_slice(tmp_path, "user", 10, 9)
    assert t.column("gid").to_pylist() == list(range(110, 119))
    assert t.column("orig_id").to_pylist() == [f"u{i}" for i in range(10, 19)]
    assert fmt.read_id_map_slice(tmp_path, "user", 4, 0).num_rows == 0
    with pytest.raises(UserError, match="has no rows 25..34"):
        fmt.read_id_map_slice(tmp_path, "user", 25, 10)


# --- verify --------------------------------------------------------------------------------------
def test_verify_catches_a_flipped_byte(tmp_path):
    path = save_checkpoint(_trained_store(), tmp_path / "run", V1_PARTS)
    assert ckpt.verify(path) == 2 * 2 + 2  # 2 partitions x (user, item) + dense.pt + meta.json
    for rel in ("embeddings/item-00001.parquet", "dense.pt"):
        f = path / rel
        original = f.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
        with pytest.raises(UserError, match=rf"{re.escape(rel)} does not match its sha256"):
            ckpt.verify(path)
        f.write_bytes(original)
        assert ckpt.verify(path) == 6
    (path / "embeddings" / "user-00001.parquet").unlink()
    (path / "stray.txt").write_text("x")
    with pytest.raises(UserError, match=r"user-00001\.parquet is missing; stray\.txt is not in the manifest"):
        ckpt.verify(path)
    with pytest.raises(UserError, match="v1, which records no checksums"):
        ckpt.verify(V1_CKPT)


# --- the committed v1 checkpoint ------------------------------------------------------------------
def _v1_run_copy(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(V1_RUN, run)
    return run


def test_fixture_is_a_v1_checkpoint():
    assert ckpt.read_meta(V1_CKPT)["version"] == 1
    assert not (V1_CKPT / ckpt.MANIFEST).exists()
    assert sorted(p.name for p in (V1_CKPT / "embeddings").iterdir()) == ["item.parquet", "user.parquet"]


def test_v1_checkpoint_restores_evaluates_and_resumes_on_the_local_backend(tmp_path, capsys):
    run = _v1_run_copy(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--partitions", str(V1_PARTS), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"].endswith("step-000000001") and 0.0 <= out["recall@20"] <= 1.0

    cfg_path, over = run / "config.yaml", [f"data.partitions={V1_PARTS}"]
    trainer = Trainer(load_config(cfg_path, over), run)
    trainer.restore(run / "checkpoints" / "step-000000001")
    assert trainer.global_step == 1
    state = {k: v.numpy() for k, v in trainer.p.emb.state_dict().items()}
    assert_state_matches(state, V1_PARTS, checkpoint_rows(V1_CKPT))

    # resuming writes a v2 checkpoint next to the v1 one
    Trainer(load_config(cfg_path, over + ["train.max_steps=2"]), run).train(resume=True)
    new = ckpt.latest(run)
    assert new.name == "step-000000002" and ckpt.read_meta(new)["version"] == 2
    assert ckpt.verify(new) == 6


def test_v1_checkpoint_loads_into_another_number_of_partitions(parts3):
    book3 = fmt.PartitionBook.from_manifest(fmt.load_manifest(parts3))
    assert book3.num_parts == 3
    store = LocalEmbeddingStore(book3.num_nodes, V1_DIM, optimizer="adam", seed=5)
    store.load(V1_CKPT, parts3)
    assert_state_matches({k: v.numpy() for k, v in store.state_dict().items()}, parts3,
                         checkpoint_rows(V1_CKPT))
    weights = ckpt.load_partition_rows(V1_CKPT, parts3, 2)
    a, b = int(book3.gid_start[2]), int(book3.gid_end[2])
    np.testing.assert_array_equal(weights["weight"], store.weight[a:b].numpy())
