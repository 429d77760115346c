"""Fixtures for adapter tests: a real local HTTP server, a fake clock, and a one-client CRM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from httpfake import PROXY_VARS, FakeClock, FakeServer

import retainer
from retainer.stores import Store

from .crmkit import fill


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def crm() -> Iterator[Store]:
    s = fill(retainer.open_store("memory://"))
    yield s
    s.close()
