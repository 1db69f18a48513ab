"""Galleries record the precision that embedded them; bf16 galleries answer fp32 queries (and the reverse)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from siamsearch.cli import main
from siamsearch.core import inference
from siamsearch.core.embedder import load_model
from siamsearch.gallery import Gallery


@pytest.fixture(autouse=True)
def _restore_default_precision():
    before = inference._default_precision["value"]
    yield
    inference._default_precision["value"] = before


def test_cli_precision_is_recorded_in_the_gallery(tmp_path, tiny_model, identity_folders):
    out = tmp_path / "g"
    res = CliRunner().invoke(main, ["index", "build", str(identity_folders), "--model", str(tiny_model), "--out",
                                    str(out), "--workers", "0", "--no-progress", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["index", "info", str(out), "--json"])
    assert json.loads(res.output)["model"]["precision"] == "fp32"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["precision"] == "fp32"
    res = CliRunner().invoke(main, ["index", "build", str(identity_folders), "--model", str(tiny_model), "--out",
                                    str(out), "--precision", "int8"])
    assert res.exit_code == 2 and "int8" in res.output


def test_bf16_gallery_answers_fp32_queries(tmp_path, tiny_model, identity_folders):
    files = sorted(str(p) for p in identity_folders.rglob("*.png"))
    g16 = Gallery.build(identity_folders, load_model(tiny_model, device="cpu", precision="bf16"), out=tmp_path / "g16",
                        workers=0, progress=False)
    assert g16.info()["model"]["precision"] == "bf16"
    q32 = load_model(tiny_model, device="cpu", precision="fp32").embed(files)
    q16 = load_model(tiny_model, device="cpu", precision="bf16").embed(files)
    r32, r16 = g16.search(q32, k=1), g16.search(q16, k=1)
    # each image finds itself first whichever precision embedded the query
    assert [p[0] for p in r32.paths] == files and [p[0] for p in r16.paths] == files
    assert np.abs(r32.distances - r16.distances).max() < 0.05
    g16.close()
