"""Append actions to a JSON Lines file: the simplest hand-off to a host that polls a file."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

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
        self._fd: int | None = None  # unbuffered: a failed write leaves nothing queued to come out later
        self._seen: set[str] = set()

    def _open(self) -> int:
        if self._fd is not None and not self._same_file(self._fd):
            # the host took the file away (renamed or deleted it to process it, as one consumes a spool
            # file): writing on would append to a file nobody reads any more while the ledger says `done`
            self.close()
            self._seen = set()
        if self._fd is None:
            if self.path.is_file():  # not a device or a pipe (`/dev/full` would be read for ever)
                self._repair_and_scan()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        return self._fd

    def _same_file(self, fd: int) -> bool:
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
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
        fd = self._open()
        if action.id in self._seen:
            return
        line = memoryview((action_payload(action) + "\n").encode("utf-8"))
        size = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line) :]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            self._take_back(fd, size)
            raise
        self._seen.add(action.id)

    def _take_back(self, fd: int, size: int) -> None:
        """A failed attempt leaves no part of its line: the dispatcher tries the action again, and a disk
        that filled up mid-line (buffered, the line was kept and written again with the retry: the action
        twice in the file, and one the ledger calls `dead` in it too). When the file cannot be cut back,
        the next attempt opens it afresh, dropping a torn last line or finding a whole one there."""
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        except OSError:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):  # nothing is buffered: each line was written or taken back
                os.close(fd)

    def __repr__(self) -> str:
        return f"JsonlHandler({str(self.path)!r})"
