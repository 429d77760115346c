"""Every fenced code block in docs/*.md and README.md is run or validated according to its language, so the
docs never lie.

Each page gets its own temporary directory holding a copy of examples/, and its blocks run there in
order, sharing state (Python names, files such as `crm.db`):

- ```python: executed; the blocks of one page share one namespace.
- ```yaml: parsed; a complete rule file (top-level `rules:`) is loaded with `retainer.load_rules`; a
  scenario (top-level `steps:`) is run with `run_scenario_file` from examples/scenarios/, so its
  relative `rules:` path resolves; a list of rules, or a mapping of other rule-file keys (`features:`,
  `templates:`, ...), is loaded as part of a rule file made of the page's fragments so far.
- ```json: parsed (and loaded or run like YAML when it is a rule file or a scenario).
- ```bash / ```sh / ```shell / ```console: every command (in `console`, the lines starting with `$ `)
  must start with `retainer ` and exit 0, or the code its trailing comment documents (`# exit 2`);
  the other lines of a `console` block are output the command must print. `retainer demo` runs with
  `--clients 200` unless the block gives a size.

Anything else fails, unless the line before the fence is `<!-- no-run: reason -->` (see
docs/decisions.md, "Documentation site").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import retainer
from retainer.rules.schema import RuleFile
from retainer.testing import run_scenario_file

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = ROOT / "README.md"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:(?P<reason>.*?)-->\s*$")
EXIT = re.compile(r"#.*\bexit(?: code)?:? (?P<code>\d+)\b")
SHELLS = {"bash", "sh", "shell", "console"}
DEMO_CLIENTS = "200"
RULE_FILE_KEYS = set(RuleFile.model_fields) - {"rules"}
PLACEHOLDER_RULE = {"id": "docs-placeholder", "kind": "forgotten", "after": "60d"}

# What a page's Python blocks must print, beyond running without an error.
PRINTS = {
    "operations.md": ["'new': 3", "'done': 3", "{'result': 'completed', 'note': 'called, renewed'}"],
    "index.md": ["create_task c1", "reassign c1"],
}


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    no_run: str | None  # the stated reason, when marked

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


@dataclass
class Page:
    """State shared by the blocks of one page, in order."""

    cwd: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})
    rules: dict[str, Any] = field(default_factory=dict)  # rule fragments by id
    top: dict[str, Any] = field(default_factory=dict)  # other rule-file keys from fragments
    skipped: list[Block] = field(default_factory=list)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        assert j < len(lines), f"{_rel(path)}:{i + 1}: a code fence that is never closed"
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = NO_RUN.match(lines[k]) if k >= 0 else None
        lang = info.split()[0].strip("{}.").lower() if info else ""
        out.append(Block(path, i + 1, lang, "\n".join(body) + "\n", marker.group("reason").strip() if marker else None))
        i = j + 1
    return out


# ---------------------------------------------------------------- handlers


def run_python(block: Block, page: Page) -> None:
    # Padding puts the code on its own lines of the page, so a traceback points into the Markdown file.
    code = compile("\n" * block.line + block.code, str(block.path), "exec")
    exec(code, page.namespace)


def _load_fragment(block: Block, page: Page) -> None:
    data = {"version": 1, **page.top, "rules": list(page.rules.values()) or [PLACEHOLDER_RULE]}
    try:
        retainer.load_rules(data)
    except retainer.RulesError as exc:
        pytest.fail(f"{block.where}: with the page's fragments before it, not a valid rule file: {exc}")


def check_structured(block: Block, page: Page, data: Any) -> None:
    if isinstance(data, dict) and "steps" in data:
        scenario = page.cwd / "examples" / "scenarios" / f"docs-{block.path.stem}-{block.line}.scenario.yaml"
        scenario.write_text(block.code, encoding="utf-8")
        try:
            run_scenario_file(scenario)  # raises ScenarioFailure with the full report
        finally:
            scenario.unlink()  # so that the page's `retainer test examples/scenarios` sees only the examples
    elif isinstance(data, dict) and "rules" in data:
        try:
            retainer.load_rules(block.code)
        except retainer.RulesError as exc:
            pytest.fail(f"{block.where}: not a valid rule file: {exc}")
    elif isinstance(data, list) and data and all(isinstance(r, dict) and "id" in r for r in data):
        page.rules.update({r["id"]: r for r in data})
        _load_fragment(block, page)
    elif isinstance(data, dict) and data and set(data) <= RULE_FILE_KEYS:
        page.top.update(data)
        _load_fragment(block, page)
    # anything else is a fragment of some other shape: parsing it is all there is to check


def run_yaml(block: Block, page: Page) -> None:
    try:
        data = yaml.safe_load(block.code)
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.where}: not valid YAML: {exc}")
    check_structured(block, page, data)


def run_json(block: Block, page: Page) -> None:
    try:
        data = json.loads(block.code)
    except ValueError as exc:
        pytest.fail(f"{block.where}: not valid JSON: {exc}")
    check_structured(block, page, data)


def shell_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, output lines it must print) for each command of a shell block."""
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if block.lang == "console" and not pending and not line.startswith("$ "):
            if line.strip():
                assert out, f"{block.where}: console output before the first `$ ` command"
                out[-1][1].append(line)
            continue
        if block.lang == "console" and not pending:
            line = line[2:]
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((pending + line, []))
        pending = ""
    assert not pending, f"{block.where}: the last command ends with a line continuation"
    return out


def _env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    assert shutil.which("retainer", path=bindir), f"no `retainer` script next to {sys.executable}: pip install -e ."
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "200", "NO_COLOR": "1"}


def run_shell(block: Block, page: Page) -> None:
    commands = shell_commands(block)
    assert commands, f"{block.where}: a shell block without a command"
    env = _env()
    for command, expected_output in commands:
        if not command.startswith("retainer "):
            pytest.fail(
                f"{block.where}: cannot run `{command}`: only `retainer ...` commands run. "
                "Mark the block with `<!-- no-run: reason -->` on the line before its fence."
            )
        if re.search(r"https?://(?!(localhost|127\.0\.0\.1)[:/])", command):
            pytest.fail(f"{block.where}: `{command}` would reach a real host: mark the block `<!-- no-run: reason -->`")
        m = EXIT.search(command)
        want = int(m.group("code")) if m else 0
        if re.match(r"retainer\s+demo\b", command) and "--clients" not in command:
            command = re.sub(r"^retainer\s+demo\b", f"retainer demo --clients {DEMO_CLIENTS}", command)
        proc = subprocess.run(
            ["bash", "-c", command], cwd=page.cwd, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        printed = proc.stdout + proc.stderr
        assert proc.returncode == want, (
            f"{block.where}: `{command}` exited {proc.returncode}, the page says {want}\n{printed[-3000:]}"
        )
        normalized = " ".join(printed.split())
        for line in expected_output:
            assert " ".join(line.split()) in normalized, (
                f"{block.where}: `{command}` did not print the line the page shows:\n  {line}\nit printed:\n{printed}"
            )


HANDLERS = {"python": run_python, "py": run_python, "yaml": run_yaml, "yml": run_yaml, "json": run_json}
HANDLERS.update(dict.fromkeys(SHELLS, run_shell))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("path", [*PAGES, README], ids=[p.name for p in [*PAGES, README]])
def test_page_blocks(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    page = Page(cwd=tmp_path)
    for block in parse_blocks(path):
        if block.no_run is not None:
            assert block.no_run, f"{block.where}: `<!-- no-run: -->` needs a reason after the colon"
            page.skipped.append(block)
            continue
        handler = HANDLERS.get(block.lang)
        if handler is None:
            pytest.fail(
                f"{block.where}: the test cannot run a ```{block.lang or '(no language)'} block. Use python, yaml, "
                f"json, bash or console, or mark it with `<!-- no-run: reason -->` on the line before its fence."
            )
        handler(block, page)
    printed = capsys.readouterr().out
    for text in PRINTS.get(path.name, []):
        assert text in printed, f"{_rel(path)}: its Python blocks did not print {text!r}:\n{printed}"


def test_parser_and_markers(tmp_path: Path) -> None:
    """The extraction itself: fences, languages, markers and shell commands are read as documented."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- no-run: a crontab line -->\n```text\n30 2 * * * retainer run\n```\n\n"
        "```console\n$ retainer validate a.yaml   # exit 2\nsome output\n$ retainer \\\n  schema\n```\n\n"
        "- item\n\n  ```yaml\n  rules: []\n  ```\n````\n```inner\n````\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page)
    assert [(b.lang, b.line, b.no_run) for b in blocks] == [
        ("text", 4, "a crontab line"),
        ("console", 8, None),
        ("yaml", 17, None),
        ("", 20, None),
    ]
    assert blocks[2].code == "rules: []\n"
    assert shell_commands(blocks[1]) == [
        ("retainer validate a.yaml   # exit 2", ["some output"]),
        ("retainer    schema", []),
    ]
    assert EXIT.search(shell_commands(blocks[1])[0][0]).group("code") == "2"  # type: ignore[union-attr]


def test_every_page_is_in_the_site_nav() -> None:
    """A page the tests run but nobody can reach is as bad as a page that lies."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in PAGES if not re.search(rf":\s*{re.escape(p.name)}\s*$", nav, flags=re.M)]
    assert not missing, f"docs pages missing from the nav in mkdocs.yml: {missing}"
