"""Helpers shared by the benchmark scripts: default data paths, machine facts, result files."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """Cores, CPU model and library versions, recorded beside every figure."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def write_results(name: str, payload: dict, table_rows: list[tuple], headers: tuple, title: str,
                  results: Path = RESULTS) -> Path:
    """Write ``results/NAME.json`` (payload + machine) and ``results/NAME.md`` (a small table).

    ``results``: the folder (default ``benchmarks/results``; tests pass a temporary one).
    """
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "machine": machine()}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table_rows]
    m = payload["machine"]
    lines += ["", f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), torch {m['torch']}."]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.json"
