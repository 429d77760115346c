"""pytest collects `*.scenario.yaml` and `*.scenario.yml` files as tests (through the `pytest11` entry point).

A failing scenario reports the scenario, the step, expected vs actual actions and the explanation of
the rules involved, with no Python traceback: analysts read it, not developers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .scenario import SUFFIXES, ScenarioError, ScenarioFailure, load_scenario, run_scenario_file, scenario_name


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name.endswith(SUFFIXES):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioWarning(UserWarning):
    """A plan warning of a passing scenario (a client skipped for a threshold attribute that is not a duration)."""


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            name = load_scenario(self.path).name
        except ScenarioError:
            name = scenario_name(self.path)  # the item reports the error when it runs
        yield ScenarioItem.from_parent(self, name=name)


class ScenarioItem(pytest.Item):
    def runtest(self) -> None:
        sc = run_scenario_file(self.path)
        for w in sc.warnings:  # in pytest's warnings summary: a passing scenario may have skipped a client
            warnings.warn(ScenarioWarning(f"{self.name}: {w}"), stacklevel=1)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioFailure | ScenarioError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario: {self.name}"
