"""Every `siamsearch ...` command line shown in the README and docs/*.md names a real command and real options.

The CLI examples' *behaviour* is covered by the command tests (which run the
same commands on tiny data); this test keeps the documentation's syntax from
drifting away from the code, and its relative links from pointing nowhere.
"""
import re
import shlex
from pathlib import Path

import click
import pytest

from siamsearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def readme_command_lines(page: Path = README) -> list[str]:
    """Command lines inside a page's non-Python code blocks (`siamsearch ...` or `$ siamsearch ...`)."""
    lines, in_block, lang = [], False, ""
    for raw in page.read_text(encoding="utf-8").splitlines():
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
ALL_LINES = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in readme_command_lines(page)]
COMMANDS = {"train", "calibrate", "verify", "query", "index", "evaluate", "data", "demo"}


def _named(lines) -> set:
    return {shlex.split(l.replace("[", " ").replace("]", " "))[1] for l in lines}


def test_readme_has_command_examples():
    """The front page shows one real example of every command."""
    assert len(LINES) >= 10
    assert COMMANDS <= _named(LINES)


def test_docs_pages_exist_and_show_commands():
    assert len(PAGES) >= 8, "the reference pages in docs/ are missing"
    assert COMMANDS <= _named(line for _, line in ALL_LINES)


@pytest.mark.parametrize("page,line", ALL_LINES)
def test_readme_command_line_is_valid(page, line):
    tokens = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
    cmd, rest = resolve(tokens)
    if isinstance(cmd, click.Group):
        pytest.fail(f"README line names no subcommand of `{cmd.name}`: {line}")
    known = {opt for p in cmd.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    known |= {"--help", "-h"}
    for tok in rest:
        if tok.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", tok):
            name = tok.split("=")[0]
            assert name in known, f"`{name}` is not an option of `siamsearch {cmd.name}` ({page} line: {line})"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_somewhere(page):
    """Every relative link of README.md and docs/*.md names an existing file (and heading, if it has a #part)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} names no file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: link to {target} names no heading of {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_modules_and_functions_exist(page):
    """Every dotted `siamsearch.x.y` the page names is a module or an attribute of one (names move; docs follow)."""
    import importlib

    for dotted in sorted(set(re.findall(r"\bsiamsearch(?:\.[A-Za-z_]\w*)+", page.read_text(encoding="utf-8")))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{page.name} names {dotted}, which does not exist"
                obj = getattr(obj, attr)
            break


def _leaf_commands(cmd: click.Command, path: tuple = ()):
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(click.Context(cmd)):
            yield from _leaf_commands(cmd.get_command(click.Context(cmd), name), path + (name,))
    else:
        yield " ".join(path), cmd


@pytest.mark.parametrize("name,cmd", list(_leaf_commands(main)), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_and_option_is_documented(name, cmd):
    """Every subcommand, and every option (either spelling of a --x/--no-x flag), appears in README.md or docs/*.md."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    assert re.search(rf"siamsearch {re.escape(name)}\b", text), f"`siamsearch {name}` is shown nowhere in the docs"
    for p in cmd.params:
        opts = [o for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if o.startswith("-")]
        if opts and not any(re.search(re.escape(o) + r"(?![\w-])", text) for o in opts):
            pytest.fail(f"`siamsearch {name}` option {opts[0]} is described nowhere in README.md or docs/")


def test_top_level_options_are_documented():
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    for p in main.params:
        for opt in getattr(p, "opts", []):
            assert f"siamsearch {opt}" in text, f"`siamsearch {opt}` is described nowhere in README.md or docs/"
