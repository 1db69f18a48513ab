"""Issue 16, "a picture of the answer": query/verify --sheet, report grids whose captions do not overlap,
names in other scripts."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from querylayer import named_identity_folders, untrained_model
from siamsearch.cli import main
from siamsearch.evaluation import report as report_mod
from siamsearch.gallery import Gallery
from siamsearch.query.sheets import drawable, text_fonts

NAMES = ["Zoë", "Ωμέγα", "Юлия", "李小龍"]


@pytest.fixture
def setup(tmp_path):
    model = untrained_model(tmp_path / "m.pt")
    people = named_identity_folders(tmp_path / "people", NAMES, per_id=3)
    Gallery.build(people, model, out=tmp_path / "index", workers=0, progress=False).close()
    return {"model": model, "people": people, "index": tmp_path / "index"}


def test_drawable_keeps_what_fonts_have_and_replaces_the_rest():
    families, covered = text_fonts()
    assert families[0] == "DejaVu Sans"
    assert drawable("Zoë Ωμέγα Юлия") == "Zoë Ωμέγα Юлия"  # DejaVu Sans has Latin, Greek, Cyrillic
    out = drawable("李小龍")
    assert len(out) == 3 and all(c == "李小龍"[i] or c == "?" for i, c in enumerate(out))
    assert all(ord(c) in covered for c in out if c != "?")


def test_query_sheet_draws_every_answer(setup, tmp_path):
    sheet = tmp_path / "matches.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Glyph ... missing" warning for the non-Latin names
        r = CliRunner().invoke(main, ["query", str(setup["people"]), "--index", str(setup["index"]), "-k", "3",
                                      "--threshold", "0.5", "--sheet", str(sheet)])
    assert r.exit_code == 0, r.output
    assert f"drew {sheet}" in r.output
    img = Image.open(sheet)
    assert img.width > 300 and img.height > 12 * 100  # 12 queries (rows) of 1 + 3 images
    assert np.asarray(img.convert("L")).std() > 10  # not blank


def test_verify_sheet_one_pair_and_pairs(setup, tmp_path):
    a, b = setup["people"] / "Zoë" / "img_0.png", setup["people"] / "Юлия" / "img_1.png"
    sheet = tmp_path / "pair.png"
    r = CliRunner().invoke(main, ["verify", str(a), str(b), "--model", str(setup["model"]), "--threshold", "0.3",
                                  "--sheet", str(sheet)])
    assert r.exit_code == 0, r.output
    assert Image.open(sheet).width > 200
    csv = setup["people"] / "pairs.csv"
    csv.write_text("a,b,is_same\nZoë/img_0.png,Zoë/img_1.png,1\nZoë/img_0.png,missing.png,0\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["verify", "--pairs", str(csv), "--model", str(setup["model"]), "--threshold",
                                  "0.3", "--sheet", str(tmp_path / "pairs.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pairs.png").stat().st_size > 2000


def test_report_grid_captions_do_not_overlap_the_row_above(monkeypatch):
    figs = []
    original = report_mod._png

    def keep(fig):
        fig.canvas.draw()
        figs.append(fig)
        return b""

    monkeypatch.setattr(report_mod, "_png", keep)
    img = np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)
    items = [([img, img], f"{NAMES[k % 4]} | {NAMES[(k + 1) % 4]}\nd=0.{k}00 accepted") for k in range(8)]
    report_mod.plot_grid(items, "Hardest impostor pairs")
    fig = figs[0]
    renderer = fig.canvas.get_renderer()
    axes = np.asarray(fig.axes).reshape(2, 4)
    for col in range(4):
        above = axes[0, col].get_window_extent(renderer)
        title = axes[1, col].title.get_window_extent(renderer)
        assert title.y1 <= above.y0 + 0.5, (title, above)  # display y grows upwards
    monkeypatch.setattr(report_mod, "_png", original)
    assert report_mod.plot_grid(items, "again")[:8] == b"\x89PNG\r\n\x1a\n"
