"""Shared fixtures: every store-facing test runs against every backend."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import retainer
from retainer.stores import Store

BACKENDS = ["memory", "sqlite"]


def make_store(kind: str, tmp_path: Path, timezone: str = "UTC") -> Store:
    if kind == "memory":
        return retainer.open_store("memory://", timezone=timezone)
    return retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}", timezone=timezone)


@contextmanager
def fresh(backend: str = "memory") -> Iterator[Store]:
    """A store of its own for one hypothesis example (function fixtures are shared across examples)."""
    with tempfile.TemporaryDirectory() as d:
        s = make_store(backend, Path(d))
        try:
            yield s
        finally:
            s.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[Store]:
    s = make_store(backend, tmp_path)
    yield s
    s.close()


def engine_for(rules: dict[str, Any] | str, store: Store) -> retainer.Engine:
    return retainer.Engine(retainer.load_rules(rules), store)


def bench_module(name: str) -> ModuleType:
    """A script of benchmarks/ loaded as a module (with benchmarks/ importable while it loads, for the
    scripts that import each other), for tests of the benchmark code itself."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(bench))
