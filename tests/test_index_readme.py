"""index/README.md describes exactly what a build writes: every HDF5 dataset and attribute, every Parquet
column, every key of shards.json and manifest.json, and its reading examples run as written.

A freshly built tiny gallery (HDF5 and sharded) is opened with h5py / pyarrow / json only and compared
with the names the README's tables and key lists give, both ways: nothing written goes undocumented,
nothing documented is missing.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import pytest

from conftest import make_identity_folders
from siamsearch import Gallery

pq = pytest.importorskip("pyarrow.parquet")

README = Path(__file__).resolve().parents[1] / "index" / "README.md"
TEXT = README.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text under heading ``## title`` (up to the next ``## ``)."""
    return TEXT.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_names(text: str, header: str) -> set:
    """The backticked names in the first column of the Markdown table whose header row starts with ``header``."""
    rows = text.split(f"| {header} |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def build(tmp_path: Path, model: Path, **kw) -> Path:
    src = make_identity_folders(tmp_path / "imgs", n_ids=3, per_id=4, size=16)
    out = tmp_path / ("sharded" if kw else "plain")
    Gallery.build(src, model, out=out, workers=0, progress=False, **kw)
    return out


def test_hdf5_datasets_and_attributes_are_the_documented_ones(tmp_path, tiny_model):
    folder = build(tmp_path, tiny_model)
    h5 = section("`gallery.h5`")
    with h5py.File(folder / "gallery.h5", "r") as f:
        assert set(f) == table_names(h5, "dataset")
        assert set(f.attrs) == table_names(h5, "attribute")
    manifest = json.loads((folder / "manifest.json").read_text())
    keys = set(re.findall(r"`(\w+)`", section("`manifest.json`").split("It is derived")[0]))
    assert set(manifest) == keys
    info_doc = section("`manifest.json`").split("index info --json", 1)[1].split(")", 1)[0]
    without, with_ = (set(re.findall(r"`(\w+)`", part)) for part in info_doc.split(";", 1))
    assert set(Gallery.open(folder).info()) == (keys - without) | with_
    tree = TEXT.split("```\nindex/NAME/\n", 1)[1].split("```", 1)[0]
    assert {p.name for p in folder.iterdir()} <= set(re.findall(r"── (\S+?)/?\s", tree))


def test_sharded_columns_and_shards_json_keys_are_the_documented_ones(tmp_path, tiny_model):
    folder = build(tmp_path, tiny_model, shard_size=5)
    sharded = section("The sharded format (`--engine ray` or `--shard-size N`)")
    m = json.loads((folder / "shards.json").read_text())
    doc = sharded.split("`shards.json`:", 1)[1].split("```", 1)[0]
    attrs_doc = doc.split("(the same attributes", 1)[1].split(")", 1)[0]
    top = set(re.findall(r"`(\w+)`", doc.replace(attrs_doc, "")))
    per_shard = {"file", "rows", "first_id", "id_end", "nodes", "skipped"}
    assert set(m) == top - (per_shard - {"skipped"}) - {"null"}
    assert set(m["shards"][0]) == per_shard and per_shard <= top
    attrs_doc = " ".join(attrs_doc.split()).replace("model fingerprint, config, path",
                                                    "model_fingerprint, model_config, model_path")
    words = set(re.findall(r"\b\w+\b", attrs_doc))
    assert set(m["attrs"]) <= words, f"shards.json attrs not in index/README.md: {set(m['attrs']) - words}"
    for s in m["shards"]:
        assert set(pq.read_table(folder / s["file"]).column_names) == table_names(sharded, "column")
    tree = sharded.split("```\nindex/NAME/\n", 1)[1].split("```", 1)[0]
    listed = {n.split("/")[0] for n in re.findall(r"── (\S+)", tree)}
    for p in folder.iterdir():
        assert p.name in listed or re.fullmatch(r"faiss\.\w+\.ivfdata", p.name), f"{p.name} is not in index/README.md"


@pytest.mark.parametrize("kind", ["hdf5", "sharded"])
def test_reading_examples_run_as_written(tmp_path, tiny_model, monkeypatch, kind):
    kw = {"shard_size": 5} if kind == "sharded" else {}
    folder = build(tmp_path, tiny_model, **kw)
    blocks = re.findall(r"```python\n(.*?)```", TEXT, re.S)
    code = blocks[1] if kind == "sharded" else blocks[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("index/NAME", folder.name), "index/README.md", "exec"), {})
