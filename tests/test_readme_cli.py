"""Every `siamsearch ...` command line shown in the README names a real command and real options.

The CLI examples' *behaviour* is covered by the command tests (which run the
same commands on tiny data); this test keeps the README's syntax from
drifting away from the code.
"""
import re
import shlex
from pathlib import Path

import click
import pytest

from siamsearch.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command_lines() -> list[str]:
    """Command lines inside the README's non-Python code blocks (`siamsearch ...` or `$ siamsearch ...`)."""
    lines, in_block, lang = [], False, ""
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            in_block, lang = (not in_block), raw[3:].strip()
            continue
        if not in_block or lang == "python":
            continue
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.startswith("siamsearch "):
            lines.append(re.split(r"\s+#", line)[0].strip())
    return lines


def resolve(tokens: list[str]) -> tuple[click.Command, list[str]]:
    cmd, rest = main, tokens[1:]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        if sub is None:
            break
        cmd, rest = sub, rest[1:]
    return cmd, rest


LINES = readme_command_lines()


def test_readme_has_command_examples():
    assert len(LINES) >= 10
    named = {shlex.split(l.replace("[", " ").replace("]", " "))[1] for l in LINES}
    assert {"train", "calibrate", "verify", "query", "index", "evaluate", "data", "demo"} <= named


@pytest.mark.parametrize("line", LINES)
def test_readme_command_line_is_valid(line):
    tokens = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
    cmd, rest = resolve(tokens)
    if isinstance(cmd, click.Group):
        pytest.fail(f"README line names no subcommand of `{cmd.name}`: {line}")
    known = {opt for p in cmd.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    known |= {"--help", "-h"}
    for tok in rest:
        if tok.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", tok):
            name = tok.split("=")[0]
            assert name in known, f"`{name}` is not an option of `siamsearch {cmd.name}` (README line: {line})"
