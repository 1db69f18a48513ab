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


def _other_than_auto() -> str:
    """A precision that ``auto`` does not pick on this machine's CPU."""
    import torch

    return "fp32" if inference.resolve_precision("auto", torch.device("cpu")) != "fp32" else "bf16"


def test_update_embeds_in_the_gallerys_precision(tmp_path, tiny_model, identity_folders):
    """`index update` without --precision used to embed new files in `auto`'s precision and relabel the
    whole gallery with it (an fp32 gallery said bf16 after one added file)."""
    other = _other_than_auto()
    out = tmp_path / "g"
    res = CliRunner().invoke(main, ["index", "build", str(identity_folders), "--model", str(tiny_model), "--out",
                                    str(out), "--workers", "0", "--no-progress", "--precision", other])
    assert res.exit_code == 0, res.output
    new = identity_folders / "id_0" / "new.png"
    (identity_folders / "id_1" / "img_0.png").rename(new)
    inference.set_default_precision("auto")
    res = CliRunner().invoke(main, ["index", "update", str(out), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    model = load_model(tiny_model, device="cpu", precision=other)
    with Gallery.open(out) as g:
        assert g.info()["model"]["precision"] == other
        np.testing.assert_array_equal(g.embeddings[g.paths.index(str(new))], model.embed([str(new)])[0])
    # `index build` into the gallery again (it resumes / updates it) keeps the precision too
    newer = identity_folders / "id_0" / "newer.png"
    (identity_folders / "id_2" / "img_0.png").rename(newer)
    res = CliRunner().invoke(main, ["index", "build", str(identity_folders), "--model", str(tiny_model), "--out",
                                    str(out), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    with Gallery.open(out) as g:
        assert g.info()["model"]["precision"] == other
        np.testing.assert_array_equal(g.embeddings[g.paths.index(str(newer))], model.embed([str(newer)])[0])
    res = CliRunner().invoke(main, ["index", "info", str(out)])
    assert f"embedded in {other}," in res.output


def test_update_in_another_precision_records_both(tmp_path, tiny_model, identity_folders):
    out = tmp_path / "g"
    g = Gallery.build(identity_folders, load_model(tiny_model, device="cpu", precision="fp32"), out=out,
                      workers=0, progress=False)
    g.close()
    (identity_folders / "id_0" / "img_0.png").rename(identity_folders / "id_0" / "moved.png")
    res = CliRunner().invoke(main, ["index", "update", str(out), "--workers", "0", "--no-progress",
                                    "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    info = json.loads(CliRunner().invoke(main, ["index", "info", str(out), "--json"]).output)
    assert info["model"]["precision"] == "fp32+bf16"
    assert json.loads((out / "manifest.json").read_text())["model"]["precision"] == "fp32+bf16"
    # another update in bf16 names each precision once; with no --precision it runs in `auto`'s
    (identity_folders / "id_1" / "img_0.png").rename(identity_folders / "id_1" / "moved.png")
    res = CliRunner().invoke(main, ["index", "update", str(out), "--workers", "0", "--no-progress",
                                    "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    with Gallery.open(out) as g:
        assert g.info()["model"]["precision"] == "fp32+bf16"


def test_resumed_build_in_another_precision_does_not_mix_rows(tmp_path, tiny_model, identity_folders, monkeypatch):
    """A build interrupted in fp32 and run again in bf16 used to keep the fp32 journal rows and record the
    gallery as bf16; now a journal of another precision is not reused."""
    from siamsearch.core.errors import GalleryInterrupted
    from siamsearch.gallery import store as gstore

    monkeypatch.setattr(gstore, "CHUNK_ROWS", 4)  # a journal segment every 4 rows
    m32 = load_model(tiny_model, device="cpu", precision="fp32")
    real = m32.embed_files

    def interrupted(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(m32, "embed_files", interrupted)
    out = tmp_path / "g"
    with pytest.raises(GalleryInterrupted):
        Gallery.build(identity_folders, m32, out=out, batch_size=4, workers=0, progress=False)
    assert any((out / ".pending").glob("seg-*.npz"))
    m16 = load_model(tiny_model, device="cpu", precision="bf16")
    with Gallery.build(identity_folders, m16, out=out, batch_size=4, workers=0, progress=False) as g:
        assert g.info()["model"]["precision"] == "bf16" and g.last_report.resumed == 0
        np.testing.assert_array_equal(g.embeddings, m16.embed(g.paths))


def test_journal_session_holds_the_precision_and_reads_older_journals(tmp_path):
    from siamsearch.gallery import store as gstore

    args = (tmp_path / "g", "0123456789abcdef", "/src", 8, "from-folder")
    gstore.PendingLog(*args, "fp32")
    info = tmp_path / "g" / ".pending" / "session.json"
    assert json.loads(info.read_text())["precision"] == "fp32"
    (info.parent / "seg-000001.npz").write_bytes(b"rows")
    gstore.PendingLog(*args, "fp32")
    assert (info.parent / "seg-000001.npz").exists()  # same session: kept
    gstore.PendingLog(*args, "bf16")
    assert not (info.parent / "seg-000001.npz").exists()  # another precision: discarded
    # a journal written before sessions held the precision is reused, as it was then
    info.write_text(json.dumps({"fingerprint": args[1], "source_dir": args[2], "dim": 8, "label_mode": args[4]}))
    (info.parent / "seg-000001.npz").write_bytes(b"rows")
    gstore.PendingLog(*args, "bf16")
    assert (info.parent / "seg-000001.npz").exists()


def test_cli_reads_siamsearch_precision(tmp_path, tiny_model, identity_folders, monkeypatch):
    """$SIAMSEARCH_PRECISION=fp32 was ignored by the CLI (--precision's default `auto` overrode it): the gallery
    recorded auto's precision. A bad value is a usage error naming the variable's option."""
    other = _other_than_auto()
    monkeypatch.setenv("SIAMSEARCH_PRECISION", other)
    out = tmp_path / "g"
    res = CliRunner().invoke(main, ["index", "build", str(identity_folders), "--model", str(tiny_model), "--out",
                                    str(out), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["model"]["precision"] == other
    monkeypatch.setenv("SIAMSEARCH_PRECISION", "int8")
    res = CliRunner().invoke(main, ["index", "update", str(out)])
    assert res.exit_code == 2 and "--precision" in res.output and "int8" in res.output
    assert "Traceback" not in res.output
