"""One error hierarchy, so hosts can catch `RetainerError` and the CLI maps each kind to an exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class RetainerError(Exception):
    """Base of every error retainer raises on purpose."""


class RulesError(RetainerError):
    """A rule file is invalid. Carries the file, the 1-based line and the rule id when known."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, rule: str | None = None
    ) -> None:
        self.message, self.file, self.line, self.rule = message, file, line, rule
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<rules>"
        if self.line is not None:
            where += f":{self.line}"
        if self.rule:
            where += f" (rule {self.rule})"
        return f"{where}: {self.message}"


class DataError(RetainerError):
    """A fact is invalid. Names the entity, the row (file line or index), the id and the field."""

    def __init__(
        self,
        message: str,
        *,
        entity: str | None = None,
        row: int | str | None = None,
        field: str | None = None,
        file: str | None = None,
        id: str | None = None,
    ) -> None:
        self.message, self.entity, self.row, self.field, self.file, self.id = (message, entity, row, field, file, id)
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.row}" if self.row is not None else self.file)
        elif self.entity:
            parts.append(f"{self.entity}[{self.row}]" if self.row is not None else self.entity)
        if self.id:
            parts.append(f"id={self.id}")
        if self.field:
            parts.append(f"field {self.field}")
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class StoreError(RetainerError):
    """A store cannot be opened, read or written (bad URL, locked database, schema mismatch)."""


class StoreBusyError(StoreError):
    """Another writer held the store's write lock for longer than a write waits (the CRM's own sync, an
    import): worth waiting for again, unlike a store that cannot be written at all."""


class RunInProgressError(StoreBusyError):
    """Another retainer run holds the store's run lock: try again when it has finished (a job runner's "retry
    later", unlike a store that cannot be opened)."""


class DispatchError(RetainerError):
    """A handler failed to deliver an action."""


class ArgumentError(RetainerError, ValueError):
    """A caller passed an argument retainer cannot use (an unknown time zone or status, a string where
    a list is expected, no store). Also a ValueError: several of these were plain ValueErrors before."""


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1, quote: bool = True) -> str:
    """`; did you mean 'x'?` for the closest choices, or "": one spelling of the hint in every message."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=n)
    close = close or [c for c in choices if c.casefold() == word.casefold()][:n]  # `C1` for `c1`: half the letters
    if not close:
        return ""
    return f"; did you mean {', '.join(repr(c) if quote else c for c in close)}?"


def redact(url: str) -> str:
    """`https://user:secret@crm/hook?token=x` -> `https://***@crm/hook?***`: webhook and store URLs end up in
    messages, and those in cron mail and CI logs. A URL with nothing to hide is shown as written.

    Everything between `//` and the last `@` is taken for the user and password, even where a URL parser
    would end the host earlier: a password with `/`, `?` or `#` (base64 tokens have `/`) was shown whole.
    That hides the host of a URL with an `@` in its path, which is the safe mistake."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        url = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    try:
        parts = urlsplit(url)
    except ValueError:  # `[` in the host: nothing after the scheme is shown
        return f"{scheme}://***" if sep else "***"
    if not parts.query and not parts.fragment:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "***" if parts.query else "", ""))


#: C0 and C1 control characters (but tab and newline), and the bidirectional overrides: shown as `\\x1b` or
#: `\\u202e`. A CRM id or a server's answer with ESC sequences cleared the operator's screen, set the window
#: title or planted a link when printed; an override makes text read in another order than it is.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))} | {
    c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def printable(text: str) -> str:
    """`text` with control characters shown as escapes, for a terminal or a stored error message."""
    return text.translate(_CONTROLS)


def not_utf8(path: Path) -> tuple[int | None, str]:
    """The first line of `path` that is not UTF-8 and what to say about it, for a rule or data file's error
    (read again as bytes: only on the error path)."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1].hex()
                return n, f"not UTF-8 text (byte 0x{bad} in column {exc.start + 1}); save the file as UTF-8"
    return None, "not UTF-8 text; save the file as UTF-8"


def read_rules_text(path: Path, what: str, error: type[RulesError] = RulesError) -> str:
    """A rule or scenario file's text, a byte-order mark (as Notepad writes it) dropped as in data files;
    `error` names the first line that is not UTF-8, or why the file cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        line, message = not_utf8(path)
        raise error(message, file=str(path), line=line) from None
    except OSError as exc:
        raise error(f"cannot read {what}: {exc}", file=str(path)) from None


class RepeatedKeyError(ValueError):
    """A JSON object names a key twice. Raised by `unique_keys`; each reader turns it into its own error
    with the file and line."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"duplicate key {key!r}")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for `json.loads`: json keeps the last of a repeated key silently (a threshold or a
    touch's client_id replaced without a word); YAML rule files and CSV headers already refuse a repeat."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RepeatedKeyError(k)
        out[k] = v
    return out
