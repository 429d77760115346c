"""A plan: the actions retainer proposes as of one instant, what it held back, and counts.

Its JSON is byte-identical for the same facts, rules and as_of: actions sorted by key, keys sorted,
no timings, every instant rendered in the rule set's time zone.
"""

from __future__ import annotations

import copy
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson

from .actions import Action, Suppression


def _default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, frozenset | set):
        return sorted(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _encode(obj: Any, indent: int | None) -> bytes | str:
    """orjson's UTF-8 bytes, or the standard library's text. orjson writes the same text as `json.dumps`
    ten times faster (a first night at 100k clients is 35 MB of JSON), but it stops at 64-bit integers
    (a client attribute can hold an account number) and at lone surrogates (a name read from a JSONL
    file with a stray escape); the standard library writes those, as text."""
    if indent is None or indent == 2:
        try:
            opt = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
            return orjson.dumps(obj, default=_default, option=opt)
        except TypeError:
            pass  # anything else fails below too, with the standard message
    return json.dumps(obj, default=_default, sort_keys=True, indent=indent, ensure_ascii=False,
                      separators=(",", ":") if indent is None else None)  # fmt: skip


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON with keys sorted, non-ASCII kept, compact unless indented."""
    out = _encode(obj, indent)
    return out.decode() if isinstance(out, bytes) else out


def dumps_bytes(obj: Any, *, indent: int | None = None) -> bytes:
    """`dumps` as UTF-8 (UnicodeEncodeError for a lone surrogate, which UTF-8 cannot hold)."""
    out = _encode(obj, indent)
    return out if isinstance(out, bytes) else out.encode()


def action_dict(a: Action) -> dict[str, Any]:
    """Field values as they are (`_default` renders dates and decimals): a copy the caller may change,
    down to the evidence (one dict shared by the actions of a match) and its lists."""
    d = dict(a.__dict__)
    for k, v in d.items():
        if isinstance(v, dict):
            d[k] = {n: list(x) if isinstance(x, list) else x for n, x in v.items()}
        elif isinstance(v, list):
            d[k] = list(v)
    return d


#: actions per call of the encoder when a plan is written in pieces: large enough that the calls cost
#: nothing next to the encoding, small enough that a piece is a few hundred KB whatever the plan's size
_PIECE = 2000


def _items(items: Sequence[Any], fields: Callable[[Any], Any]) -> Iterator[bytes | str]:
    """The members of a JSON array, `_PIECE` at a time, each piece but the first led by its comma: what
    `_encode` writes for the whole list, without its brackets."""
    for n in range(0, len(items), _PIECE):
        piece = _encode([fields(x) for x in items[n : n + _PIECE]], None)
        lead = "," if n else ""
        if isinstance(piece, str):
            yield lead + piece[1:-1]
        else:
            yield lead.encode() + piece[1:-1]


def _as_is(a: Action) -> dict[str, Any]:
    """The action's own field dict, for serialisers that only read it. A copy of each costs more than
    writing the JSON: 1.5 s and 230 MB for the 350,000 actions of the full example set at 100k."""
    return a.__dict__


def _held(s: Suppression, fields: Callable[[Action], dict[str, Any]] = _as_is) -> dict[str, Any]:
    """A held-back action as the plan's JSON shows it."""
    return {"action": fields(s.action), "reason_code": s.reason_code, "detail": s.detail}


@dataclass
class Plan:
    as_of: datetime
    actions: list[Action]
    suppressed: list[Suppression]
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase; not part of the JSON
    cursors: dict[str, str] = field(default_factory=dict)  # round-robin positions to save on commit
    # bad data the rules met (a client attribute `forgotten_after: "20 days"`): visible, not silent
    warnings: list[str] = field(default_factory=list)

    def by_rule(self) -> Counter[str]:
        return Counter(a.rule for a in self.actions)

    def to_dict(self) -> dict[str, Any]:
        return self._tree(action_dict)

    def _tree(self, fields: Callable[[Action], dict[str, Any]]) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "actions": [fields(a) for a in self.actions],
            "suppressed": [_held(s, fields) for s in self.suppressed],
            "stats": self.stats if fields is _as_is else copy.deepcopy(self.stats),
            "warnings": self.warnings if fields is _as_is else list(self.warnings),
        }

    def to_json(self, *, indent: int | None = None) -> str:
        """Compact by default; byte-identical for equal plans."""
        if indent is not None:
            return dumps(self._tree(_as_is), indent=indent)
        out = io.StringIO()
        for piece in self.pieces():
            out.write(piece if isinstance(piece, str) else piece.decode())
        return out.getvalue()

    def to_json_bytes(self, *, indent: int | None = None) -> bytes:
        """`to_json()` as UTF-8, for a file or a socket: no text copy of a plan that can be 200 MB."""
        if indent is not None:
            return dumps_bytes(self._tree(_as_is), indent=indent)
        out = io.BytesIO()
        self.write_json(out)
        return out.getvalue()  # the buffer itself, not a copy of it

    def write_json(self, fp: Any) -> None:
        """`to_json_bytes()` written to a binary file as it is made, a few hundred KB at a time: the
        plan's JSON is never whole in memory (222 MB for the full example rule set at 100k clients).
        A lone surrogate raises `UnicodeEncodeError`, as in `to_json_bytes()`."""
        for piece in self.json_pieces():
            fp.write(piece)

    def json_pieces(self) -> Iterator[bytes]:
        """`to_json_bytes()` in pieces, for a writer of your own: UTF-8 bytes, a few hundred KB each. A lone
        surrogate raises `UnicodeEncodeError`, as in `to_json_bytes()`."""
        for piece in self.pieces():
            yield piece.encode() if isinstance(piece, str) else piece

    def pieces(self) -> Iterator[bytes | str]:
        """The compact JSON of `to_json()` in pieces that concatenate to it: UTF-8 bytes, or text where the
        standard library wrote the piece (an integer wider than 64 bits, a lone surrogate; see `_encode`),
        for a writer that passes such text through its own encoding (`retainer plan -f json`)."""
        yield b'{"actions":['
        yield from _items(self.actions, _as_is)
        yield b'],"as_of":'
        yield _encode(self.as_of.isoformat(), None)
        yield b',"stats":'
        yield _encode(self.stats, None)
        yield b',"suppressed":['
        yield from _items(self.suppressed, _held)
        yield b'],"warnings":'
        yield _encode(self.warnings, None)
        yield b"}"

    def to_jsonl(self) -> str:
        """One action per line (then one suppression per line, marked), for piping into other tools."""
        return "".join(self.jsonl_lines())

    def jsonl_lines(self) -> Iterator[str]:
        """The lines of `to_jsonl()` one by one, as `retainer plan -f jsonl` writes them."""
        for a in self.actions:
            yield dumps({"kind": "action", **_as_is(a)}) + "\n"
        for x in self.suppressed:
            held = {"kind": "suppressed", "reason_code": x.reason_code, "detail": x.detail}
            yield dumps({**held, "action": _as_is(x.action)}) + "\n"
