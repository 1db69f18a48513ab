"""`evaluate` and its report on tiny generated data and an untrained tiny model."""
import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from conftest import make_identity_folders
from test_metrics_oneshot import make_oneshot_runs

from siamsearch.core.checkpoint import write_calibration
from siamsearch.cli import main
from siamsearch.data import open_dataset
from siamsearch.core.distance import pair_distances
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import SiamsearchError
from siamsearch.evaluation.evaluate import evaluate, is_oneshot_runs, summary_rows


@pytest.fixture
def folders(tmp_path):
    return make_identity_folders(tmp_path / "ids", n_ids=6, per_id=6)


def test_evaluate_writes_metrics_and_report(tiny_model, folders, tmp_path):
    out = tmp_path / "run"
    m = evaluate(tiny_model, folders, pairs=1000, seed=3, n_boot=20, out=out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["verification"]["auc"] == m["verification"]["auc"]
    assert m["dataset"]["n_images"] == 36 and m["dataset"]["n_identities"] == 6
    assert m["settings"]["seed"] == 3 and m["settings"]["decision_rule"].startswith("distance <= threshold")
    # independent recomputation of the ROC AUC: 36 images allow 90 + 540 distinct pairs, all used (<= 1000)
    assert m["verification"]["n_genuine"] == 90 and m["verification"]["n_impostor"] == 540
    assert m["verification"]["pairs"]["all_pairs"]
    model, ds = load_model(tiny_model), open_dataset(folders)
    emb = model.embed([ds.load(i) for i in range(len(ds))])
    a, b = np.array(list(itertools.combinations(range(len(ds)), 2))).T
    is_same = ds.identities[a] == ds.identities[b]
    d = pair_distances(emb[a], emb[b])
    assert m["verification"]["auc"]["value"] == pytest.approx(roc_auc_score(is_same, -d), abs=1e-6)
    assert 0 <= m["identification"]["leave_one_out"]["map_at_r"] <= 1
    assert m["identification"]["open_set"]["n_unknown"] > 0
    assert all(len(r["ci95"]) == 2 for r in m["identification"]["open_set"]["dir_at_fpir"])
    assert any("not supported" in w for w in m["warnings"])  # TAR@1e-4 from 540 impostor pairs
    assert any("no calibrated threshold" in w for w in m["warnings"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "Warnings" in html
    for name in ("roc", "det", "distances", "cmc", "false_accepts", "false_rejects"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    lo, hi = m["identification"]["leave_one_out"]["ci95"]["precision_at_1"]
    dlo, dhi = m["identification"]["open_set"]["dir_at_fpir"][0]["ci95"]
    p1 = m["identification"]["leave_one_out"]["precision_at_1"]
    assert f"| precision@1 | {p1:.4f} | [{lo:.4f}, {hi:.4f}] |" in md  # the tables carry the intervals
    assert f"| [{dlo:.4f}, {dhi:.4f}] |" in md
    assert dict(summary_rows(m))["ROC AUC"].startswith(f"{m['verification']['auc']['value']:.4f}")


def test_evaluate_is_seeded(tiny_model, folders):
    a = evaluate(tiny_model, folders, pairs=200, seed=1, n_boot=10, protocol="verification")
    b = evaluate(tiny_model, folders, pairs=200, seed=1, n_boot=10, protocol="verification")
    assert a["verification"] == b["verification"]
    assert "identification" not in a


def test_calibrated_threshold_is_checked(tiny_model, folders):
    write_calibration(tiny_model, {"threshold": 0.5, "target_far": 0.01, "rule": "distance <= threshold"})
    m = evaluate(tiny_model, folders, pairs=200, n_boot=0, protocol="verification")
    c = m["verification"]["calibrated"]
    assert c["threshold"] == 0.5 and 0 <= c["far"] <= 1 and 0 <= c["tar"] <= 1
    assert m["verification"]["hardest"]["threshold_kind"] == "calibrated"


def test_oneshot_protocol(tiny_model, tmp_path):
    runs = make_oneshot_runs(tmp_path / "all_runs")
    assert is_oneshot_runs(runs) and not is_oneshot_runs(tiny_model.parent / "nothing")
    m = evaluate(tiny_model, runs, protocol="all", out=tmp_path / "o")
    assert m["oneshot"]["n_runs"] == 2 and 0 <= m["oneshot"]["accuracy"] <= 1
    assert (tmp_path / "o" / "plots" / "oneshot.png").exists()
    with pytest.raises(SiamsearchError, match="one-shot"):
        evaluate(tiny_model, runs, protocol="verification")


def test_bad_arguments(tiny_model, folders):
    with pytest.raises(SiamsearchError, match="one-shot run format"):
        evaluate(tiny_model, folders, protocol="oneshot")
    with pytest.raises(SiamsearchError, match="--data"):
        evaluate(tiny_model, None)
    with pytest.raises(SiamsearchError, match="protocol"):
        evaluate(tiny_model, folders, protocol="magic")


def test_limit_subsamples(tiny_model, folders):
    m = evaluate(tiny_model, folders, pairs=100, n_boot=0, limit=20, protocol="identification")
    assert m["dataset"]["n_images"] == 20


def test_cli_table_and_json(tiny_model, folders, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(folders), "--pairs", "200",
                             "--bootstrap", "10", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "ROC AUC" in r.output and "MAP@R" in r.output and (out / "report.html").exists()
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(folders), "--out", str(out),
                             "--json", "--protocol", "identification"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["identification"]["leave_one_out"]["n_queries"] == 36
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model)])
    assert r.exit_code == 2 and "--data" in r.output
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(folders), "--protocol", "oneshot",
                             "--out", str(out)])
    assert r.exit_code == 2 and "one-shot" in r.output and "Traceback" not in r.output


def test_warns_about_training_identities(folders, tmp_path):
    import torch

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(0)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    path = tmp_path / "seen.pt"
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), {"train_identities": ["id_0", "id_1", "other"]})
    m = evaluate(path, folders, pairs=100, n_boot=0, protocol="verification")
    assert m["dataset"]["identities_seen_in_training"] == 2
    assert any("2 of 6 identities" in w for w in m["warnings"])


def test_report_shows_index_comparison(tmp_path):
    from siamsearch.metrics.identification import leave_one_out
    from siamsearch.evaluation.report import write_report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    exact, _ = leave_one_out(x, y)
    deployed = dict(exact, map_at_r=exact["map_at_r"] - 0.01)
    metrics = {"settings": {"model": "m.pt"}, "warnings": [],
               "index_comparison": {"index": "index/g", "index_type": "IVF", "n_items": 200, "exact": exact,
                                    "deployed": deployed, "difference": {}}}
    written = write_report(tmp_path, metrics, {})
    html = (tmp_path / "report.html").read_text()
    assert "Deployed index vs exact search" in html and "-0.0100" in html
    assert "cmc" in written


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_index_comparison_on_a_real_gallery(tiny_model, folders, tmp_path, factory):
    from siamsearch.gallery import Gallery

    g = Gallery.build(folders, tiny_model, out=tmp_path / "index" / "g", factory=factory, workers=0, progress=False)
    g.close()
    m = evaluate(tiny_model, None, index=tmp_path / "index" / "g", out=tmp_path / "r")
    c = m["index_comparison"]
    assert c["n_items"] == 36 and c["index_type"]
    if factory == "Flat":  # an exact deployed index must agree with exact search
        assert c["deployed"]["map_at_r"] == pytest.approx(c["exact"]["map_at_r"])
        assert c["difference"]["precision_at_1"] == pytest.approx(0.0)
    assert "Deployed index vs exact search" in (tmp_path / "r" / "report.html").read_text()
    assert any(name.startswith("index:") for name, _ in summary_rows(m))


def test_index_of_another_model_is_refused(tiny_model, folders, tmp_path):
    import torch

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.errors import FingerprintMismatch
    from siamsearch.gallery import Gallery
    from siamsearch.core.model import EmbeddingNet

    Gallery.build(folders, tiny_model, out=tmp_path / "g", factory="Flat", workers=0, progress=False).close()
    torch.manual_seed(1)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    other = tmp_path / "other.pt"
    save_checkpoint(other, cfg, EmbeddingNet(cfg).state_dict(), {})
    with pytest.raises(FingerprintMismatch):
        evaluate(other, None, index=tmp_path / "g")


def test_metrics_and_calibration_record_the_precision(tiny_model, folders, tmp_path):
    """metrics.json and the calibration record did not say which precision embedded their pairs (the figures
    move by ~1e-3 between precisions)."""
    from siamsearch.core import inference

    before = inference._default_precision["value"]
    try:
        res = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(folders), "--out",
                                        str(tmp_path / "run"), "--pairs", "200", "--bootstrap", "10",
                                        "--precision", "fp16"])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["precision"] == "fp16"
        res = CliRunner().invoke(main, ["calibrate", "--model", str(tiny_model), "--data", str(folders), "--out",
                                        str(tmp_path / "cal.json"), "--pairs", "200", "--precision", "fp32"])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "cal.json").read_text())["precision"] == "fp32"
    finally:
        inference._default_precision["value"] = before
