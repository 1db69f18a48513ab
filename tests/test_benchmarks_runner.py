"""The benchmark runner's collection step and the scale benchmark's naive reference (no benchmark is run)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks.__main__ as runner  # noqa: E402
from benchmarks import metrics_scale  # noqa: E402

from siamsearch.metrics.identification import leave_one_out


def test_discover_lists_scripts_not_private_modules():
    names = [p.stem for p in runner.discover()]
    assert "metrics_scale" in names and "__main__" not in names and "_common" not in names


def test_summary_table_from_results(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "machine", lambda: {"cpu": "TestCPU", "cores": 2, "torch": "x", "date": "2020-01-01"})
    (tmp_path / "a.json").write_text(json.dumps({"benchmark": "a", "quick": True, "summary": {"speed": 1.5, "ok": True}}))
    (tmp_path / "b.json").write_text(json.dumps({"accuracy": 0.9, "baselines": {"pixels": 0.4}, "settings": {"lr": 1},
                                                 "machine": {"cores": 8, "cpu": "Other", "date": "2019-05-05"}}))
    (tmp_path / "b.md").write_text("details")
    table = runner.summarise([{"script": "c.py", "status": "failed (exit 1)", "seconds": 1.0}], quick=True,
                             results=tmp_path)
    assert "TestCPU (2 cores" in table
    assert "| a | quick |  | speed: 1.5; ok: yes |" in table
    assert "| 2019-05-05 on Other (8 cores) | accuracy: 0.9; baselines.pixels: 0.4 |" in table and "lr" not in table
    assert "[b.md](benchmarks/results/b.md)" in table
    assert "| c | | | failed (exit 1); no results | |" in table


def test_readme_paste_is_idempotent(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{runner.MARK_START}\n\nafter\n")
    assert runner.paste_into_readme("| t |\n", readme)
    once = readme.read_text()
    assert once.count(runner.MARK_END) == 1 and "| t |" in once and once.endswith("after\n")
    assert runner.paste_into_readme("| t2 |\n", readme)
    twice = readme.read_text()
    assert "| t2 |" in twice and "| t |\n" not in twice and twice.count(runner.MARK_START) == 1
    (tmp_path / "plain.md").write_text("no markers")
    assert not runner.paste_into_readme("x", tmp_path / "plain.md")


def test_naive_reference_matches_batched_faiss():
    x, y = metrics_scale.synthetic(600, 16, 6)
    naive = metrics_scale.naive_metrics(x, y)
    fast, _ = leave_one_out(x, y, batch_size=50)
    for k in ("precision_at_1", "r_precision", "map_at_r"):
        assert fast[k] == pytest.approx(naive[k], abs=1e-9)
    assert fast["recall_at_k"][5] == pytest.approx(naive["recall_at_k"][5])
    assert np.isclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5).all()


def test_distributed_build_fits_start_up_and_marginal_rate():
    from benchmarks import distributed_build

    # 4 s of start-up and 2,000 images/s: 10,000 images in 9 s, 5,000 in 6.5 s
    fit = distributed_build.fixed_and_marginal({"embedded": 10000, "seconds": 9.0},
                                               {"embedded": 5000, "seconds": 6.5})
    assert fit == {"startup_s": 4.0, "marginal_ips": 2000.0}
    # a half build that took as long as the full one (noise) gives no fit, and the median leaves it out
    none = distributed_build.fixed_and_marginal({"embedded": 10000, "seconds": 6.0},
                                                {"embedded": 5000, "seconds": 6.5})
    assert none == {"startup_s": None, "marginal_ips": None}
    other = distributed_build.fixed_and_marginal({"embedded": 10000, "seconds": 8.0},
                                                 {"embedded": 5000, "seconds": 5.0})
    assert distributed_build.median_fit([fit, none, other]) == {"startup_s": 3.0, "marginal_ips": 1833.3,
                                                                 "rounds": 2}
