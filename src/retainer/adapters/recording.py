"""A handler for tests: remembers what it was given and fails on demand."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..actions import Action
from .base import PermanentError

__all__ = ["RecordingHandler"]


class RecordingHandler:
    """Records every delivered action; `fail` makes chosen deliveries raise.

    `fail` is a number (the first N calls fail), action ids or types (a set, or one string; those always
    fail), or a function `action -> bool`. `permanent=True` raises `PermanentError` (no retries) instead.
    `calls` counts every attempt per action id, delivered or not.
    """

    def __init__(
        self,
        fail: int | Iterable[str] | Callable[[Action], bool] = 0,
        *,
        permanent: bool = False,
        error: str = "simulated failure",
    ) -> None:
        self.actions: list[Action] = []
        self.calls: dict[str, int] = {}
        self.permanent = permanent
        self.error = error
        self._calls_total = 0
        if isinstance(fail, int):
            n = fail
            self._fails: Callable[[Action], bool] = lambda a: self._calls_total <= n
        elif callable(fail):
            self._fails = fail
        else:
            chosen = {fail} if isinstance(fail, str) else set(fail)  # "tag" is one type, not three letters
            self._fails = lambda a: a.id in chosen or a.type in chosen

    def handle(self, action: Action) -> None:
        self._calls_total += 1
        self.calls[action.id] = self.calls.get(action.id, 0) + 1
        if self._fails(action):
            raise (PermanentError if self.permanent else RuntimeError)(f"{self.error} for {action.id}")
        self.actions.append(action)

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.actions]

    def by_type(self, type: str) -> list[Action]:
        return [a for a in self.actions if a.type == type]
