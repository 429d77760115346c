"""The README's examples run as written (docs that lie are worse than none).

The blocks of docs/*.md are run by tests/test_docs_blocks.py.
"""

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
