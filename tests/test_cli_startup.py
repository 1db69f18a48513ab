"""`siamsearch --help` and every subcommand's `--help` load no heavy library (torch, Faiss, h5py, ...).

The commands import the library inside their functions and take their choice
lists from the torch-free ``siamsearch.core.choices``; this keeps the CLI's
start-up at a fraction of a second. The check runs in a fresh interpreter,
since this test process has long imported torch.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import click

from siamsearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "faiss", "h5py", "sklearn", "matplotlib", "scipy", "PIL")

_PROBE = r"""
import json, sys
from siamsearch.cli import main
heavy = %r
out = {}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv + ["--help"], prog_name="siamsearch", standalone_mode=False)
    except SystemExit:
        pass
    out[" ".join(argv) or "(top)"] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(out))
"""


def command_paths(group: click.Group = main, prefix=()) -> list:
    """Every command and subcommand as the words that name it (the top level is ``[]``)."""
    paths = [list(prefix)]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            paths += command_paths(cmd, (*prefix, name))
        else:
            paths.append([*prefix, name])
    return paths


def _loaded_during_help(paths: list, watched: tuple) -> dict:
    """Run every ``--help`` of ``paths`` in one fresh interpreter; which of ``watched`` were loaded after each."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE % (watched,), json.dumps(paths)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_help_is_free_of_heavy_imports():
    paths = command_paths()
    assert ["train"] in paths and ["index", "build"] in paths and ["data", "check"] in paths
    loaded = _loaded_during_help(paths, HEAVY)
    assert set(loaded) == {" ".join(p) or "(top)" for p in paths}
    offenders = {cmd: mods for cmd, mods in loaded.items() if mods}
    assert not offenders, f"--help imported heavy libraries (first offender is the culprit): {offenders}"


def test_the_probe_sees_what_help_loads():
    """The probe's check is real: watching a module the CLI does load (click), every command reports it."""
    loaded = _loaded_during_help([[], ["train"]], ("click", "torch"))
    assert loaded == {"(top)": ["click"], "train": ["click"]}


def test_choices_are_defined_once():
    """The modules that act on a choice re-export the one tuple of siamsearch.core.choices."""
    from siamsearch.core import choices, config
    from siamsearch.data import formats
    from siamsearch.evaluation import evaluate
    from siamsearch.gallery import scan
    from siamsearch.query import record
    from siamsearch.training import losses

    assert config.BACKBONES is choices.BACKBONES and config.EMBED_FROM is choices.EMBED_FROM
    assert losses.LOSSES is choices.LOSSES and losses.MINING is choices.MINING
    assert formats.FORMATS is choices.FORMATS and record.RULES is choices.RULES
    assert evaluate.PROTOCOLS is choices.PROTOCOLS and scan.LABEL_MODES is choices.LABEL_MODES
    from siamsearch.cli import precision
    from siamsearch.core import inference

    assert inference.PRECISIONS is choices.PRECISIONS and precision.CHOICES is choices.PRECISIONS


def test_shared_options_are_declared_once():
    """--device, --batch-size, --json, --seed, --progress are declared in cli/options.py and nowhere else in the CLI.

    (``--workers`` means image-decoding workers for most commands but uvicorn processes for ``serve``,
    so it is not in this list; the image-decoding one is ``options.workers_option``.)
    """
    for path in (ROOT / "siamsearch" / "cli").glob("*.py"):
        if path.name == "options.py":
            continue
        text = path.read_text(encoding="utf-8")
        for opt in ('"--device"', '"--batch-size"', '"--json"', '"--seed"', '"--progress/'):
            assert opt not in text, f"{path.name} declares {opt} itself; use siamsearch.cli.options"


def test_python_dash_m_siamsearch_is_the_same_command_line():
    """``python -m siamsearch`` runs the ``siamsearch`` command (its help and its exit codes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "siamsearch", *argv], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=120)

    helped = run("--help")
    assert helped.returncode == 0 and "Usage: siamsearch" in helped.stdout and "index" in helped.stdout
    wrong = run("no-such-command")
    assert wrong.returncode == 2 and "No such command" in wrong.stderr


def test_ray_actor_module_loads_no_gallery_storage():
    """A Ray actor unpickles ``siamsearch.gallery.engines.EmbedActor``, importing that module and its package:
    the package's names are lazy, so the actor does not load h5py or Faiss (it only runs the model), while
    ``from siamsearch.gallery import Gallery`` still works."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    probe = ("import json, sys; import siamsearch.gallery.engines; before = sorted(m for m in ('h5py', 'faiss') "
             "if m in sys.modules); from siamsearch.gallery import Gallery, SearchResult, BuildReport; "
             "print(json.dumps([before, Gallery.__name__, 'h5py' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[], "Gallery", True]
