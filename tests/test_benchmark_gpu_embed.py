"""benchmarks/gpu_embed.py on a machine without CUDA: a clear skip, exit 0, a results file saying so."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import gpu_embed  # noqa: E402


def test_cpu_only_machine_skips_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_embed.main(["--out", str(tmp_path)]) == 0
    assert "gpu_embed skipped: no CUDA GPU" in capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_embed.json").read_text())
    assert result["skipped"] is True and result["benchmark"] == "gpu_embed"
    assert "no CUDA GPU" in result["reason"] and result["summary"]["status"].startswith("skipped")
    assert "skipped" in (tmp_path / "gpu_embed.md").read_text()


def test_runner_discovers_it_under_its_issue_name():
    import benchmarks.__main__ as runner

    names = [p.stem for p in runner.discover()]
    assert "gpu_embed" in names and "gpu_check" not in names
