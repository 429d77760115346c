"""The README's Python example runs as written (docs that lie are worse than none)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import retainer

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_readme_library_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _python_blocks(ROOT / "README.md")
    assert blocks, "README has a Python example"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "create_task c1" in out and "reassign c1" in out
    assert "MATCHED" in out
    assert (tmp_path / "plan.json").read_text().startswith('{"actions":')


def test_readme_rule_file_example_validates() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    yaml_block = re.search(r"```yaml\n(.*?)```", text, flags=re.S)
    assert yaml_block
    rs = retainer.load_rules(yaml_block.group(1))
    assert [r.id for r in rs.rules] == ["forgotten", "release", "wake-sleeping"]


def test_rules_doc_examples_validate() -> None:
    """Every complete rule file (`version: 1`) in docs/rules.md loads."""
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "rules.md").read_text(encoding="utf-8"), flags=re.S):
        if block.startswith("version: 1") and "{...}" not in block:
            retainer.load_rules(block)


def test_operations_guide_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _python_blocks(ROOT / "docs" / "operations.md")
    assert blocks
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/operations.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'new': 3" in out and "'done': 3" in out  # task, reassignment, supervisor notified
    assert "{'result': 'completed', 'note': 'called, renewed'}" in out


def test_testing_guide_examples_run(tmp_path: Path) -> None:
    """The scenario shown in docs/testing.md passes; its Python twin runs as written."""
    from retainer.testing import run_scenario_file

    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    yaml_block = re.search(r"```yaml\n(.*?)```", text, flags=re.S)
    assert yaml_block
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    scenario = tmp_path / "examples" / "scenarios" / "doc.scenario.yaml"
    scenario.write_text(yaml_block.group(1), encoding="utf-8")
    assert len(run_scenario_file(scenario).steps) == 3
    for block in _python_blocks(ROOT / "docs" / "testing.md"):
        exec(compile(block, "docs/testing.md", "exec"), {})
