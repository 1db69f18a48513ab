"""Run every benchmark and collect the results: ``python -m benchmarks [--quick]``.

Every ``benchmarks/*.py`` script (not starting with ``_``) is run in its own process as
``python benchmarks/NAME.py [--quick] [--data DIR]``; each writes
``benchmarks/results/NAME.json`` (and usually ``NAME.md``). The runner then writes
``benchmarks/results/summary.md``: the machine it ran on and one table row per results
file, and pastes that into README.md between ``<!-- table: benchmarks/results/summary.md -->``
and ``<!-- /table -->``.

Results-file convention: a JSON object with ``"summary"``, a flat dict of headline figures
(``{"name": value}``), and optionally ``"benchmark"`` (its name), ``"quick"`` (bool) and
``"title"``. Files without ``"summary"`` show their top-level numbers instead.

Options: ``--quick`` (passed to every script), ``--data DIR`` (default ``../shared/data``
when it exists), ``--only NAME`` (repeatable), ``--timeout SECONDS`` per script,
``--collect-only`` (skip running; rebuild the summary), ``--no-readme``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = ROOT / "README.md"
MARK_START = "<!-- table: benchmarks/results/summary.md -->"
MARK_END = "<!-- /table -->"
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def discover() -> list[Path]:
    """Benchmark scripts: ``benchmarks/*.py`` except private modules, sorted by name."""
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))


def machine() -> dict:
    """What the numbers were measured on: :func:`benchmarks._common.machine` plus memory and versions."""
    from benchmarks._common import machine as base

    info = base()
    info["python"] = platform.python_version()
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for mod in ("faiss", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # a missing optional module is simply not listed
            pass
    return info


def run_one(script: Path, quick: bool, data: str | None, timeout: float) -> dict:
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else []) + (["--data", data] if data else [])
    t0 = time.perf_counter()
    print(f"== {script.stem}: {' '.join(cmd[1:])}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        tail = (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        status, tail = f"timed out after {timeout:.0f} s", ""
    seconds = time.perf_counter() - t0
    print(f"   {status} in {seconds:.0f} s", flush=True)
    if status != "ok":
        print("   " + tail.replace("\n", "\n   "), flush=True)
    return {"script": script.name, "status": status, "seconds": round(seconds, 1)}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def headline(result: dict) -> dict:
    """The figures shown for one results file: its ``summary``, else its top-level numbers and
    one level of dicts holding only numbers (``baselines.raw_pixels``); settings and machine are left out."""
    if isinstance(result.get("summary"), dict):
        return result["summary"]
    out = {}
    for k, v in result.items():
        if _is_number(v):
            out[k] = v
        elif isinstance(v, dict) and k not in ("settings", "machine") and v and all(_is_number(x) for x in v.values()):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
    return out


def summarise(runs: list[dict], quick: bool | None, results: Path = RESULTS) -> str:
    """Markdown: the machine, then one row per ``results/*.json``."""
    m = machine()
    lines = [
        "### Benchmark results",
        "",
        f"Collected {m.get('date')} on {m.get('cpu')} ({m.get('cores')} cores"
        + (f", {m['memory_gb']} GB RAM" if "memory_gb" in m else "")
        + f", GPU: {m.get('cuda') or 'none'}), Python {m.get('python')}, torch {m.get('torch', '?')}, "
        f"faiss {m.get('faiss', '?')}, numpy {m.get('numpy', '?')}.",
        "",
        "| benchmark | mode | measured | headline figures | details |",
        "|---|---|---|---|---|",
    ]
    status = {Path(r["script"]).stem: r for r in runs}
    for path in sorted(results.glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            lines.append(f"| {path.stem} | | | unreadable results file ({e}) | |")
            continue
        if not isinstance(result, dict):
            continue
        name = result.get("benchmark", path.stem)
        mode = "quick" if result.get("quick") else ("full" if "quick" in result else "")
        figs = "; ".join(f"{k}: {_fmt(v)}" for k, v in headline(result).items()) or "(no summary)"
        md = path.with_suffix(".md")
        details = f"[{md.name}](benchmarks/results/{md.name})" if md.exists() else ""
        mach = result.get("machine") if isinstance(result.get("machine"), dict) else {}
        when = mach.get("date", "")
        if mach and (mach.get("cpu"), mach.get("cores")) != (m.get("cpu"), m.get("cores")):
            when += f" on {mach.get('cpu')} ({mach.get('cores')} cores)"
        lines.append(f"| {name} | {mode} | {when} | {figs} | {details} |")
        status.pop(path.stem, None)
    for stem, r in status.items():
        if r["status"] != "ok":
            lines.append(f"| {stem} | | | {r['status']}; no results | |")
    if quick is not None:
        lines += ["", f"Run with `python -m benchmarks{' --quick' if quick else ''}`."]
    return "\n".join(lines) + "\n"


def paste_into_readme(table: str, readme: Path = README) -> bool:
    """Replace the text between the markers in README.md (adds the end marker after a lone start marker)."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    start = text.find(MARK_START)
    if start < 0:
        return False
    body_start = start + len(MARK_START)
    end = text.find(MARK_END, body_start)
    tail = text[end:] if end >= 0 else MARK_END + text[body_start:]
    readme.write_text(text[:body_start] + "\n" + table + tail, encoding="utf-8")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description="Run every benchmark and collect results.")
    ap.add_argument("--quick", action="store_true", help="small sizes; passed to every script")
    ap.add_argument("--data", default=None, help=f"real data folder [default: {DEFAULT_DATA} when it exists]")
    ap.add_argument("--only", action="append", default=[], help="run only this benchmark (repeatable)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per script")
    ap.add_argument("--collect-only", action="store_true", help="do not run; rebuild summary.md from results/")
    ap.add_argument("--no-readme", action="store_true", help="do not paste the table into README.md")
    ap.add_argument("--list", action="store_true", help="list the benchmark scripts and exit")
    args = ap.parse_args(argv)
    scripts = discover()
    if args.list:
        print("\n".join(s.stem for s in scripts))
        return 0
    if args.only:
        unknown = set(args.only) - {s.stem for s in scripts}
        if unknown:
            ap.error(f"no benchmark named {', '.join(sorted(unknown))}; have {', '.join(s.stem for s in scripts)}")
        scripts = [s for s in scripts if s.stem in args.only]
    data = args.data or (str(DEFAULT_DATA) if DEFAULT_DATA.exists() else None)
    runs = [] if args.collect_only else [run_one(s, args.quick, data, args.timeout) for s in scripts]
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = summarise(runs, None if args.collect_only else args.quick)
    (RESULTS / "summary.md").write_text(table, encoding="utf-8")
    print(f"wrote {(RESULTS / 'summary.md').relative_to(ROOT)}")
    if not args.no_readme and paste_into_readme(table):
        print("updated the benchmark table in README.md")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
