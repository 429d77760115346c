"""Append actions to a JSON Lines file: the simplest hand-off to a host that polls a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path

from ..actions import ACTION_TYPES, Action
from ..errors import ArgumentError
from ..ledger import action_payload

__all__ = ["JsonlHandler"]


_SQLITE = b"SQLite format 3\x00"


def _database_of(path: Path) -> str | None:
    """Whether `path` is an SQLite database, or the write-ahead log, shared memory or run lock beside one."""
    for suffix, what in (("", "an SQLite database (the store?)"), ("-wal", "the store's write-ahead log"),
                         ("-shm", "the store's shared memory"), ("-runlock", "the store's run lock")):  # fmt: skip
        base = Path(str(path)[: len(str(path)) - len(suffix)]) if str(path).endswith(suffix) else None
        if base is not None and base.is_file():
            try:
                with base.open("rb") as f:
                    if f.read(16) == _SQLITE:
                        return what
            except OSError:
                continue
    return None


class JsonlHandler:
    """One action per line, written and flushed before `handle` returns.

    Delivery is at-least-once (a crash after writing but before the ledger says `done` repeats it), so
    the handler makes the file exactly-once itself: on first use it reads the ids already in the file
    and skips them, and it drops a half-written last line left by a killed process (a complete last
    line that only lacks its newline is kept, and so is any text that is not the start of an action
    line). The host may rename or delete the file to process it: the next action starts a new file at
    the path, as log writers do. The path must be a regular file or not exist: a symbolic link, a
    device or a pipe is refused, never written through.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_symlink():  # a link planted in a spool folder made the run append to (and cut) its target
            raise ArgumentError(f"{self.path} is a symbolic link: give the file itself")
        if self.path.is_dir():
            raise ArgumentError(f"{self.path} is a folder: give a file name, e.g. {self.path / 'actions.jsonl'}")
        if self.path.exists() and not self.path.is_file():
            raise ArgumentError(f"{self.path} is not a regular file (a device or a pipe): give a file name")
        if not self.path.parent.is_dir():  # a typo must not grow a new folder tree
            raise ArgumentError(f"folder {self.path.parent} does not exist")
        if db := _database_of(self.path):  # `-H jsonl:crm.db`: lines appended to a live store, cut off by SQLite
            raise ArgumentError(f"{self.path} is {db}, not a file of actions: give another file name, "
                                f"e.g. {self.path.with_name('actions.jsonl')}")  # fmt: skip
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
            if self.path.exists() and (self.path.is_symlink() or not self.path.is_file()):
                raise OSError(f"{self.path} is not a regular file any more (a link, a device or a pipe): not written")
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(self.path, flags, 0o666)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # made a link since the check above
                    raise OSError(f"{self.path} is a symbolic link: not written through it") from None
                raise
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{self.path} is not a regular file: not written")
                self._repair_and_scan(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _same_file(self, fd: int) -> bool:
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _repair_and_scan(self, fd: int) -> None:
        """Read the ids already in the file, a line at a time (a spool file the host has not consumed may be
        large), and end the file with a newline. A last line without its newline is kept when it is whole
        JSON (another writer's, or ours cut just before the newline) or when it is not the start of a line
        of ours: text at the path that retainer did not write is never cut. Only a torn start of an action
        line, left by a process killed mid-write and never acknowledged, is dropped."""
        tail = b""
        with open(os.dup(fd), "rb", closefd=True) as f:
            for line in f:
                if not line.endswith(b"\n"):
                    tail = line
                    break
                self._remember(line)
        if not tail:
            return
        try:
            json.loads(tail)
        except ValueError:
            if _torn_action(tail):
                os.ftruncate(fd, os.fstat(fd).st_size - len(tail))
                return
        self._remember(tail)
        os.write(fd, b"\n")

    def _remember(self, line: bytes) -> None:
        if b'"id"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):  # a foreign line: not ours to judge
                self._seen.add(json.loads(line)["id"])

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


#: How a line of ours starts: `{"` and the first of its sorted keys (`as_of` for most actions).
_STARTS = tuple(f'{{"{min(t.model_fields)}":'.encode() for t in ACTION_TYPES.values())


def _torn_action(tail: bytes) -> bool:
    """Whether `tail` (a last line without its newline, not JSON) can be the start of an action line this
    handler wrote: what a process killed mid-write leaves, and the only text the handler ever removes."""
    return any(tail.startswith(s) or s.startswith(tail) for s in _STARTS)
