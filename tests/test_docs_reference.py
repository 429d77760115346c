"""The generated "Rule reference" page (docs/hooks/reference.py) is complete, without needing MkDocs.

`mkdocs build --strict` fails on the same problems; this test reports them in the test run already.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from retainer.actions import ACTION_TYPES
from retainer.rules.features import FeatureRegistry
from retainer.rules.schema import RuleFile

ROOT = Path(__file__).resolve().parents[1]


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_page_is_complete() -> None:
    text, problems = _hook().render()
    assert not problems, "\n".join(problems)
    schema = RuleFile.model_json_schema()
    for name, definition in [("RuleFile", schema), *schema["$defs"].items()]:
        assert f"{{#{name.lower()}}}" in text, f"no section for {name}"
        for field in definition.get("properties", {}):
            assert f"| `{field}` |" in text, f"{name}.{field} is not on the page"
    for name, _type, _doc in FeatureRegistry().describe():
        assert f"| `{name}` |" in text
    for action in ACTION_TYPES:
        assert f"A planned `{action}` carries" in text
    for line in text.splitlines():
        if line.startswith("| `"):
            assert "|  |" not in line and not line.rstrip().endswith("|  |"), f"an empty cell: {line}"
