"""`no_gc`: plans pause the cyclic collector; what they leave behind must still be collectable."""

from __future__ import annotations

import gc
import weakref

from retainer.model import no_gc


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_cycles_built_while_paused_are_still_collected() -> None:
    with no_gc():
        assert not gc.isenabled()
        refs = [weakref.ref(Node()) for _ in range(100)]
    assert gc.isenabled()
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_hosts_frozen_objects_stay_frozen() -> None:
    kept = [Node() for _ in range(10)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with no_gc():
            _ = [Node() for _ in range(10)]
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    del kept


def test_nested_pauses_resume_once() -> None:
    with no_gc():
        with no_gc():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
