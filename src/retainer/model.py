"""The CRM facts retainer reads: frozen, validated pydantic models.

Timestamps become aware UTC instants (seconds precision) at validation. A naive timestamp is a
wall-clock time in the time zone passed as validation context (`{"tz": tzinfo}`; stores and file
readers pass theirs), UTC when there is none. A date-only value is the start of that day.
Money is `Decimal` with at most 4 decimal places, so sums are exact in every store.
"""

from __future__ import annotations

import functools
import gc
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

from .errors import RepeatedKeyError, unique_keys
from .timeutil import DateRangeError, parse_instant

__all__ = [
    "ENTITIES",
    "Client",
    "Contract",
    "Deal",
    "Entity",
    "Invoice",
    "Manager",
    "Offer",
    "Task",
    "Touch",
    "fast_model",
]


#: 1C, the usual ERP/CRM of Russian and Ukrainian users, exports an empty date as 0001-01-01T00:00:00: read as
#: an empty cell (docs/decisions.md)
ONEC_EMPTY_DATES = frozenset({"0001-01-01", "0001-01-01T00:00:00", "0001-01-01 00:00:00", "0001-01-01T00:00"})


def _no_date(value: Any) -> bool:
    return isinstance(value, str) and value.strip() in ONEC_EMPTY_DATES


#: the first year read as "no date" in a field that may be empty: systems write 9999-12-31 (1C: 3999-12-31) for
#: "no end" (an open-ended contract, an invoice with no due date); a date that far would overflow a plan's sums
ENDLESS_YEAR = 3000


_ISO_DAY = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?:[T ]\S*)?\s*$")


def _endless(value: Any) -> bool:
    """An ISO date (or date and time) in ENDLESS_YEAR or later. Only that: `45945` (an Excel day number) or
    `31.10.2025` is not a date at all, and is refused as before rather than read as "no date"."""
    if isinstance(value, date):
        return value.year >= ENDLESS_YEAR
    if not isinstance(value, str) or (m := _ISO_DAY.match(value)) is None or int(m[1]) < ENDLESS_YEAR:
        return False
    try:
        date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:  # 9999-13-45: not a day
        return False
    return True


def _instant(value: Any, info: ValidationInfo) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str | date):
        if _no_date(value):  # in a field that has a default, Entity._blank_means_default took it as empty
            raise ValueError(f"{value!r} is 1C's empty date, and this field needs a date")
        tz = (info.context or {}).get("tz", UTC)
        try:
            return parse_instant(value, tz)
        except DateRangeError as exc:
            raise ValueError(f"invalid date/time {value!r}: {exc} (leave the cell empty for none)") from None
        except ValueError as exc:
            raise ValueError(f"invalid date/time {value!r}: use ISO 8601 such as 2026-03-01T10:00") from exc
    if isinstance(value, int | float) and not isinstance(value, bool):
        # pydantic would read a number as seconds since 1970: `at: -60` (a forgotten `d`) must not pass as 1970
        raise ValueError(f"invalid date/time {value!r}: use ISO 8601 such as 2026-03-01T10:00")
    return value


#: the largest amount a store holds: stores keep money as an integer count of ten-thousandths (SQLite's
#: 64-bit INTEGER), so 1E100 is refused here, with the row named, rather than failing in the store
MAX_AMOUNT = Decimal(2**63 - 1) / 10_000


#: How deep a client's attributes may nest: the stores encode them as JSON (orjson stops at 255 levels),
#: and no rule reads further than a few levels.
MAX_ATTRIBUTE_DEPTH = 32


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether dicts and lists in `value` nest more than `limit` levels (without recursion: the point is to
    refuse what is too deep). Client attributes and parsed rule files ask."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _money(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        value = repr(value)
    try:
        d = Decimal(str(value).strip())
    except Exception as exc:
        raise ValueError(f"invalid amount {value!r}") from exc
    if not d.is_finite():
        raise ValueError(f"invalid amount {value!r}")
    if d.copy_abs() > MAX_AMOUNT:  # not abs(): under the context, 1e999999999 raised decimal.Overflow
        raise ValueError(f"amount {value!r} is too large (at most {MAX_AMOUNT})")
    if d != d.quantize(Decimal("0.0001")):
        raise ValueError(f"amount {value!r} has more than 4 decimal places")
    return d


def _blank_none(value: Any) -> Any:
    """Blank text is no value: a CRM export's " " in an optional column (an action_id of " " hid a touch from
    the caps)."""
    return None if isinstance(value, str) and not value.strip() else value


Instant = Annotated[datetime, BeforeValidator(_instant)]
OptInstant = Annotated[datetime | None, BeforeValidator(_instant)]
Money = Annotated[Decimal, BeforeValidator(_money)]
OptMoney = Annotated[Decimal | None, BeforeValidator(_money)]
OptStr = Annotated[str | None, BeforeValidator(_blank_none)]
Id = Annotated[str, Field(min_length=1)]


class Entity(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True, defer_build=True
    )

    id: Id

    @model_validator(mode="before")
    @classmethod
    def _blank_means_default(cls, data: Any) -> Any:
        """An empty cell (or null, or in a date field 1C's empty date or a "no end" date such as 9999-12-31) in
        a field with a default takes the default, as in a CRM export."""
        if isinstance(data, dict):
            fields, dates = cls.model_fields, _date_fields(cls)
            return {
                k: v
                for k, v in data.items()
                if not ((v is None or v == "" or (k in dates and (_no_date(v) or _endless(v))))
                        and k in fields and not fields[k].is_required())
            }  # fmt: skip
        return data


@functools.cache
def _date_fields(model: type[Entity]) -> frozenset[str]:
    return frozenset(n for n, f in model.model_fields.items() if is_instant(f))


def is_instant(f: FieldInfo) -> bool:
    """A date/time field: read by `_instant`."""
    return any(isinstance(m, BeforeValidator) and m.func is _instant for m in f.metadata)


class Manager(Entity):
    name: OptStr = None
    active: bool = True
    supervisor_id: OptStr = None
    max_clients: Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_blank_none)] = None
    team: OptStr = None


_TAG_SEP = re.compile(r"[;,]")


class Client(Entity):
    manager_id: Id
    name: OptStr = None
    status: Literal["active", "prospect", "archived"] = "active"
    tags: frozenset[str] = frozenset()
    contact_policy: Literal["ok", "no_marketing", "do_not_contact"] = "ok"
    abc_class: OptStr = None
    cost_to_serve: OptMoney = None
    created_at: OptInstant = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tags", mode="before")
    @classmethod
    def _split_tags(cls, v: Any) -> Any:
        """A cell of text holds tags separated by `;` or `,`: exports write `key-account,vip` as often as
        `key-account;vip`, and read as one tag it silently never matched `tags: {contains: key-account}`."""
        if isinstance(v, str):
            return frozenset(t.strip() for t in _TAG_SEP.split(v) if t.strip())
        if isinstance(v, list | tuple | set | frozenset):  # from Python: as the stores keep them, or refused
            tags = [t.strip() if isinstance(t, str) else t for t in v]
            bad = next((t for t in tags if isinstance(t, str) and ";" in t), None)
            if bad is not None:  # SQLite keeps tags `;`-joined: it read this one back as two
                raise ValueError(f"a tag cannot hold ';': {bad!r} (give each tag on its own)")
            return frozenset(t for t in tags if t != "")
        return v

    @field_validator("attributes", mode="before")
    @classmethod
    def _parse_attributes(cls, v: Any) -> Any:
        objects = not isinstance(v, str)  # Python objects, not JSON text: their values may not be JSON
        if isinstance(v, str):
            try:
                v = json.loads(v, object_pairs_hook=unique_keys)
            except RepeatedKeyError as exc:
                raise ValueError(f"attributes: {exc}") from None
            except RecursionError:  # 50,000 `[` in a cell was a traceback
                raise ValueError(f"attributes nest more than {MAX_ATTRIBUTE_DEPTH} levels deep") from None
            except ValueError as exc:
                raise ValueError("attributes must be a JSON object") from exc
        if isinstance(v, dict) and nests_deeper(v, MAX_ATTRIBUTE_DEPTH):
            raise ValueError(f"attributes nest more than {MAX_ATTRIBUTE_DEPTH} levels deep")
        if objects and isinstance(v, dict):  # JSON values only: SQLite keeps them as JSON, and read a Decimal
            # back as text, so the two stores planned differently
            for key, item in v.items():
                try:
                    json.dumps(item, allow_nan=False)
                except (TypeError, ValueError):
                    raise ValueError(f"attributes[{key!r}] is {item!r}: attributes hold JSON values (text, numbers, "
                                     f"true/false, lists, objects); convert it, e.g. str() or float()") from None
        return v


TouchKind = Literal["call", "email", "meeting", "message", "sms", "comment", "document"]
Direction = Literal["inbound", "outbound", "internal"]


class Touch(Entity):
    client_id: Id
    at: Instant
    kind: TouchKind = "call"
    direction: Direction = "outbound"
    manager_id: OptStr = None
    channel: OptStr = None
    action_id: OptStr = None  # the retainer action this contact carried out: caps count it once, in the ledger


class Task(Entity):
    client_id: Id
    manager_id: OptStr = None
    created_at: Instant
    due_at: OptInstant = None
    done_at: OptInstant = None
    status: Literal["open", "done", "cancelled"] = "open"
    kind: OptStr = None
    source: Literal["crm", "retainer"] = "crm"
    # the retainer create_task this task carries out (a CRM sync writes retainer's tasks back): it makes the
    # task retainer's, whose creation is not activity, whatever `source` the sync sent
    action_id: OptStr = None

    @model_validator(mode="before")
    @classmethod
    def _retainers_own(cls, data: Any) -> Any:
        """A sync that sent retainer's task back as the CRM's (`source` left at `crm`) reset the forgotten clock
        with every reminder: the client was never released."""
        if isinstance(data, dict) and isinstance(a := data.get("action_id"), str) and a.strip():
            return {**data, "source": "retainer"}
        return data


class Deal(Entity):
    client_id: Id
    created_at: OptInstant = None
    closed_at: OptInstant = None
    status: Literal["open", "won", "lost"] = "open"
    amount: OptMoney = None


class Invoice(Entity):
    client_id: Id
    issued_at: Instant
    due_at: OptInstant = None
    amount: Money
    paid_at: OptInstant = None
    paid_amount: OptMoney = None

    @field_validator("paid_amount")
    @classmethod
    def _paid_when(cls, v: Decimal | None, info: ValidationInfo) -> Decimal | None:
        """An amount paid needs the date it was paid: without one it would count as nothing paid."""
        if v is not None and "paid_at" in info.data and info.data["paid_at"] is None:  # (a bad paid_at: its own error)
            raise ValueError("paid_amount needs paid_at (when it was paid); without it nothing counts as paid")
        return v


class Offer(Entity):
    client_id: Id
    category: Literal["retention", "development", "service"] = "development"
    made_at: OptInstant = None
    ends_at: OptInstant = None
    amount: OptMoney = None
    action_id: OptStr = None  # the retainer propose_offer this offer carries out: caps count it once


class Contract(Entity):
    client_id: Id
    starts_at: OptInstant = None
    ends_at: OptInstant = None
    monthly_amount: OptMoney = None


#: Entity name (as in data files and `store.add(...)` keywords) -> model, in load order.
ENTITIES: dict[str, type[Entity]] = {
    "managers": Manager,
    "clients": Client,
    "touches": Touch,
    "tasks": Task,
    "deals": Deal,
    "invoices": Invoice,
    "offers": Offer,
    "contracts": Contract,
}


_SHAPES: dict[type[BaseModel], tuple[tuple[str, ...], dict[str, Any], set[str] | None]] = {}


def _copy(v: Any) -> Any:
    return v.copy() if isinstance(v, dict) else v


def fast_model(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """Build a model from trusted values without validating (rows we wrote, actions we build).

    Missing fields take their defaults. Hot paths only: everything from outside is validated.
    """
    shape = _SHAPES.get(cls)
    if shape is None:
        fields = cls.model_fields
        shape = _SHAPES[cls] = (
            tuple(fields),
            {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()},
            # a frozen model never changes its set of fields: one set serves every instance (a plan at
            # 100k clients holds hundreds of thousands of models, and a set is 200+ bytes)
            set(fields) if cls.model_config.get("frozen") else None,
        )
    names, defaults, shared = shape
    if len(values) != len(names):
        values = {k: values[k] if k in values else _copy(defaults[k]) for k in names}
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", shared if shared is not None else set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects at once (a store's rows, a plan's
    actions): none of them forms a cycle, and at 100k objects the collector's repeated passes over the
    young generation cost more than building them."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        # Re-enabling alone would make the next allocation walk everything built meanwhile (0.3 s for a
        # plan at 100k clients). freeze() + unfreeze() files it all under the oldest generation instead,
        # without a walk: it is collected (cycles included) by the next full collection, if ever needed.
        if gc.get_freeze_count() == 0:  # never thaw what the host froze on purpose (before a fork)
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def active_supervisor(manager: Manager, managers: Mapping[str, Manager]) -> Manager | None:
    """The nearest active manager up the chain of supervisors: an escalation ("nothing helped") or a note
    for the supervisor of a manager whose supervisor has left goes to the one above, not to someone who
    will never read it. None when nobody up the chain is active."""
    seen = {manager.id}
    boss = managers.get(manager.supervisor_id or "")
    while boss is not None and boss.id not in seen and not boss.active:
        seen.add(boss.id)
        boss = managers.get(boss.supervisor_id or "")
    return boss if boss is not None and boss.id not in seen and boss.active else None  # a cycle: nobody
