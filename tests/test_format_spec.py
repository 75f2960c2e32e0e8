"""docs/format.md and distgnn/format.py describe the same format, and create() writes exactly it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq

from distgnn import format as fmt
from partition.pipeline import CreateOptions, create

SPEC = Path(__file__).resolve().parents[1] / "docs" / "format.md"

TYPE_NAMES = {"int64": "int64", "int8": "int8", "bool": "bool"}


def _spec_tables() -> dict[str, dict[str, str]]:
    """{section heading path: {column: type}} from the '### `path`' sections of the spec."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in SPEC.read_text().splitlines():
        if line.startswith("#"):  # any other heading (e.g. the checkpoint format's) ends a section
            m = re.match(r"^### `(.+)`$", line)
            current = m.group(1) if m else None
            if current:
                tables[current] = {}
            continue
        m = re.match(r"^\| `(\w+)` \| ([^|]+) \|", line)
        if current and m:
            tables[current][m.group(1)] = m.group(2).strip()
    return tables


def _code_columns(columns: dict, ts: bool) -> dict[str, str]:
    out = {name: (str(typ) if typ is not None else "orig") for name, typ in columns.items()}
    if ts:
        out[fmt.TS_COLUMN[0]] = str(fmt.TS_COLUMN[1])
    return out


def test_spec_tables_match_code():
    tables = _spec_tables()
    assert set(tables) == {"id_map/{user,item}.parquet", "part-NNNNN/nodes.parquet",
                           "part-NNNNN/edges.parquet", "targets/{test,valid}.parquet", "manifest.json"}
    expected = {
        "id_map/{user,item}.parquet": _code_columns(fmt.ID_MAP_COLUMNS, False),
        "part-NNNNN/nodes.parquet": _code_columns(fmt.NODES_COLUMNS, False),
        "part-NNNNN/edges.parquet": _code_columns(fmt.EDGES_COLUMNS, True),
        "targets/{test,valid}.parquet": _code_columns(fmt.TARGETS_COLUMNS, True),
    }
    for section, columns in expected.items():
        spec_cols = tables[section]
        assert list(spec_cols) == list(columns), section
        for name, typ in columns.items():
            if typ == "orig":
                assert "int64 or string" in spec_cols[name]
            else:
                assert spec_cols[name] == TYPE_NAMES[typ], (section, name)
    assert f"version {fmt.FORMAT_VERSION}" in SPEC.read_text().splitlines()[0]
    assert f'"format": "{fmt.FORMAT_NAME}"' in SPEC.read_text()


def test_written_directory_matches_spec(logs, tmp_path):
    out = tmp_path / "parts"
    manifest = create(CreateOptions(train=str(logs["train"]), test=str(logs["test"]),
                                    valid=str(logs["test"]), out=str(out), num_parts=2, progress=False))
    assert {"targets/test.parquet", "targets/valid.parquet"} <= set(manifest["files"])
    text = SPEC.read_text()
    layout = re.search(r"## Directory layout\n\n```\n(.*?)```", text, re.S).group(1)
    for relpath in manifest["files"]:
        generic = re.sub(r"part-\d{5}", "part-00000", relpath)
        assert f"OUT/{generic}" in layout, relpath
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == set(manifest["files"]) | {fmt.MANIFEST}

    tables = _spec_tables()
    section_of = {"id_map": "id_map/{user,item}.parquet", "nodes": "part-NNNNN/nodes.parquet",
                  "edges": "part-NNNNN/edges.parquet", "targets": "targets/{test,valid}.parquet"}
    for relpath in manifest["files"]:
        key = relpath.split("/")[0] if relpath.split("/")[0] in section_of else Path(relpath).stem
        schema = pq.read_schema(out / relpath)
        spec_cols = [c for c in tables[section_of[key]] if c != "ts" or manifest["has_ts"]]
        assert schema.names == spec_cols, relpath

    block = re.search(r"### `manifest.json`\n\n```\n(.*?)```", text, re.S).group(1)
    spec_keys = set(re.findall(r'^  "(\w+)"', block, re.M))
    assert spec_keys == set(json.loads((out / fmt.MANIFEST).read_text()))
    assert set(re.findall(r'"(\w+)"', block.split('"quality":')[1].split("}")[0])) == set(manifest["quality"])
