"""Append actions to a JSON Lines file: the simplest hand-off to a host that polls a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from ..actions import Action
from ..errors import ArgumentError
from ..ledger import action_payload

__all__ = ["JsonlHandler"]


class JsonlHandler:
    """One action per line, written and flushed before `handle` returns.

    Delivery is at-least-once (a crash after writing but before the ledger says `done` repeats it), so
    the handler makes the file exactly-once itself: on first use it reads the ids already in the file
    and skips them, and it drops a half-written last line left by a killed process (a complete last
    line that only lacks its newline is kept). The host may rename or delete the file to process it:
    the next action starts a new file at the path, as log writers do.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ArgumentError(f"{self.path} is a folder: give a file name, e.g. {self.path / 'actions.jsonl'}")
        if not self.path.parent.is_dir():  # a typo must not grow a new folder tree
            raise ArgumentError(f"folder {self.path.parent} does not exist")
        self.fsync = fsync
        self._file: IO[str] | None = None
        self._seen: set[str] = set()

    def _open(self) -> IO[str]:
        if self._file is not None and not self._same_file(self._file):
            # the host took the file away (renamed or deleted it to process it, as one consumes a spool
            # file): writing on would append to a file nobody reads any more while the ledger says `done`
            self.close()
            self._seen = set()
        if self._file is None:
            if self.path.exists():
                self._repair_and_scan()
            self._file = self.path.open("a", encoding="utf-8")
        return self._file

    def _same_file(self, f: IO[str]) -> bool:
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(f.fileno())
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _repair_and_scan(self) -> None:
        with self.path.open("rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                try:  # a whole line that only lacks its newline (another writer's, or cut just before it)
                    json.loads(data[end:])
                    f.write(b"\n")
                    data += b"\n"
                    end = len(data)
                except ValueError:  # a line cut short by a crash: never acknowledged, so drop it
                    f.truncate(end)
        for line in data[:end].splitlines():
            if line.strip():
                try:
                    self._seen.add(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):
                    continue  # a foreign line: not ours to judge

    def handle(self, action: Action) -> None:
        f = self._open()
        if action.id in self._seen:
            return
        f.write(action_payload(action) + "\n")
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        self._seen.add(action.id)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"JsonlHandler({str(self.path)!r})"
