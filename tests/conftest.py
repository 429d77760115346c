"""Shared fixtures: every store-facing test runs against every backend."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
