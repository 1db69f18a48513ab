"""The demo in its reduced mode: proves `make demo`'s pipeline works end to end (CI runs this)."""
import json

from click.testing import CliRunner

from siamsearch.cli import main


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
