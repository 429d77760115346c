"""The package ships py.typed: what a host writes against the documented API, and the adapter example it
copies, type-check under `mypy --strict` (with pydantic's plugin, as docs/data.md advises)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_api_and_the_adapter_example_type_check(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extras: pip install -e '.[test]'")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nplugins = pydantic.mypy\nstrict = True\n")
    files = [ROOT / "tests" / "typed" / "host.py", ROOT / "examples" / "adapter" / "crm_adapter.py",
             ROOT / "examples" / "adapter" / "nightly.py"]  # fmt: skip
    command = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache")]
    r = subprocess.run([*command, *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
