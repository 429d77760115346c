"""Validation shared by every store: one place turns rows into models and errors into `DataError`."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal, Protocol, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ValidationError

from ..errors import DataError
from ..model import ENTITIES, ONEC_EMPTY_DATES, Entity, _blank_none, _money, is_instant, no_gc
from ..timeutil import AS_OF_YEARS, parse_instant

#: (entity, field) -> the entity it must reference
REFERENCES: dict[tuple[str, str], str] = {
    ("managers", "supervisor_id"): "managers",
    ("clients", "manager_id"): "managers",
    **{(e, "client_id"): "clients" for e in ("touches", "tasks", "deals", "invoices", "offers", "contracts")},
}


def check_entity(entity: str) -> type[Entity]:
    try:
        return ENTITIES[entity]
    except KeyError:
        raise DataError(f"unknown entity {entity!r}; valid: {', '.join(ENTITIES)}") from None


#: checks across fields that the compiled converters leave to the model (which explains the failure)
_CROSS: dict[str, Callable[[Any], bool]] = {
    "invoices": lambda m: m.paid_amount is None or m.paid_at is not None,
    "tasks": lambda m: m.action_id is None or m.source == "retainer",  # the model makes it retainer's
}


def validate_rows(
    entity: str,
    rows: Iterable[Entity | Mapping[str, Any] | Sequence[Any]],
    tz: tzinfo,
    *,
    file: str | None = None,
    lines: Sequence[int] | None = None,
    header: Sequence[str] | None = None,
) -> list[Entity]:
    """Models pass through; mappings (or, with `header`, CSV cells where "" is empty) are validated.
    Errors name the row (file line when known).

    A row takes the compiled converter of its columns (`_converter`) and, when that is not sure of
    it, the model's own validation, which accepts it or says precisely what is wrong: the converter
    only ever accepts what the model would accept, as the model would (tests/test_ingest.py)."""
    model = check_entity(entity)
    out: list[Entity] = []
    append = out.append
    ctx = {"tz": tz}
    utc = tz is UTC
    fixed = _converter(model, tuple(header), utc) if header is not None else None
    check = _CROSS.get(entity)
    conv: Any = fixed
    cols: Any = header
    with no_gc():
        for n, row in enumerate(rows):
            if header is None:
                if isinstance(row, model):  # validated again: `model_copy(update=...)` and `model_construct`
                    # skip validation, and a status 'bogus' or a date as text got into the store and crashed plans
                    where = lines[n] if lines is not None else n
                    append(_validate_one(model, row.__dict__, ctx, entity=entity, where=where, file=file))
                    continue
                if isinstance(row, Entity):
                    where = lines[n] if lines is not None else n
                    raise DataError(
                        f"expected a {model.__name__}, got a {type(row).__name__}", entity=entity, row=where, file=file
                    )
                if isinstance(row, Mapping):
                    cols = tuple(row)
                    conv = _converter(model, cols, utc)
                    cells: Any = tuple(row.values())
                else:
                    conv, cells = None, row
            else:
                cells = row
            m = conv(cells, tz) if conv is not None else None
            if m is not None and check is not None and not check(m):
                m = None  # a rule across fields: the model's validation says what is wrong
            if m is None:
                where = lines[n] if lines is not None else n
                data = row if header is None else {h: (v if v != "" else None) for h, v in zip(cols, row, strict=True)}
                m = _validate_one(model, data, ctx, entity=entity, where=where, file=file)
            append(m)
    return out


def _validate_one(
    model: type[Entity], row: Any, ctx: dict[str, Any], *, entity: str, where: int, file: str | None
) -> Entity:
    """The model's validation of one row, its first error turned into a DataError naming the field."""
    try:
        return model.model_validate(row, context=ctx)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = str(err["msg"]).removeprefix("Value error, ")
        spec = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; valid fields: {', '.join(model.model_fields)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err.get("input") is None and spec is not None and spec.is_required():
            msg = "required field is empty"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        raw_id = row.get("id") if isinstance(row, Mapping) else None
        raise DataError(
            msg,
            entity=entity,
            row=where,
            field=field,
            file=file,
            id=str(raw_id) if raw_id not in (None, "") else None,
        ) from None


# ---------------------------------------------------------------- compiled converters
# Per-row pydantic validation costs ~25 µs; a CRM export has millions of rows of a few plain shapes
# (an id, an ISO instant, a decimal, one of a few words). For each entity and column order a function
# is generated once that converts the common, clearly valid spellings of each field with the same
# helpers the model's validators call, and gives up (returns None) on anything else: an empty
# required cell, a word outside a Literal, a number where text is expected, an unknown column. The
# row then goes to the model, so every accepted value and every error message is the model's.

_BOOLS = {"true": True, "false": False, "True": True, "False": False, "1": True, "0": False}
_CONVERTERS: dict[tuple[type[Entity], tuple[str, ...]], Any] = {}


def _field_code(model: type[Entity], name: str, v: str, env: dict[str, Any], utc: bool) -> str | None:
    """An expression converting cell `v` (not empty) like the model's validation of field `name`, or
    None when the field has no fast form. Raising (or `_slow`) means: let the model decide."""
    f = model.model_fields[name]
    ann = f.annotation
    before = [m.func for m in f.metadata if isinstance(m, BeforeValidator)]
    field_validators = [
        d.func
        for d in model.__pydantic_decorators__.field_validators.values()
        if name in d.info.fields and d.info.mode == "before"
    ]
    if is_instant(f):
        if utc:  # the common `2026-03-01T10:00:00`, naive, in a UTC store: what parse_instant makes of it
            # and the date-only `2026-03-01`, the start of that day, within AS_OF_YEARS (compared as text)
            years = f"'{AS_OF_YEARS[0]}' <= {v} < '{AS_OF_YEARS[1] + 1}'"
            return (
                f"fromiso({v} + '+00:00') if type({v}) is str and len({v}) == 19 and {v}[4] == '-' "
                f"and {v}[10] in 'T ' and {v}[13] == ':' and {v}[16] == ':' and {years} "
                f"else fromiso({v} + 'T00:00:00+00:00') "
                f"if type({v}) is str and len({v}) == 10 and {v}[4] == '-' and {v}[7] == '-' and {years} "
                f"else instant({v}, tz)"
            )
        return f"instant({v}, tz)"
    if _money in before:
        return f"money({v})"
    if field_validators:
        if len(field_validators) != 1 or ann not in (frozenset[str], dict[str, Any]):
            return None
        env[f"fv_{name}"] = field_validators[0]
        want = "frozenset" if ann == frozenset[str] else "dict"
        return f"want(fv_{name}({v}), {want})"
    if ann is bool:
        return f"bools[{v}]"
    if get_origin(ann) is Literal:
        env[f"lit_{name}"] = frozenset(get_args(ann))
        return f"{v} if {v} in lit_{name} else slow()"
    if (ann is str and not before) or (ann == (str | None) and before == [_blank_none]):
        return f"{v} if type({v}) is str and {v} and not ({v}[0].isspace() or {v}[-1].isspace()) else text({v})"
    args = get_args(ann)
    if before == [_blank_none] and len(args) == 2 and type(None) in args:  # Optional[Annotated[int, Ge(0)]]
        inner = next(a for a in args if a is not type(None))
        if get_origin(inner) is Annotated and get_args(inner)[0] is int:
            meta = [m for x in inner.__metadata__ for m in getattr(x, "metadata", [x])]
            if [type(m).__name__ for m in meta] == ["Ge"] and meta[0].ge == 0:
                return f"int({v}) if {v}.isascii() and {v}.isdigit() else slow()"
    return None


def _converter(model: type[Entity], columns: tuple[str, ...], utc: bool) -> Any:
    """`convert(cells, tz) -> model | None` for rows with these columns (see the note above)."""
    key = (model, columns, utc)
    fn = _CONVERTERS.get(key)
    if fn is not None:
        return fn
    fields = model.model_fields
    env: dict[str, Any] = {
        "instant": parse_instant,
        "fromiso": datetime.fromisoformat,
        "nodates": ONEC_EMPTY_DATES,
        "money": _money,
        "bools": _BOOLS,
        "slow": _slow,
        "want": _want,
        "need": _need,
        "text": _text,
        "Slow": _Slow,
        "new": model.__new__,
        "model": model,
        "sa": object.__setattr__,
    }
    names = [f"c{j}" for j in range(len(columns))]
    body: list[str] = []
    exprs: dict[str, str] = {}
    ok = len(set(columns)) == len(columns) and all(c in fields for c in columns)
    for j, name in enumerate(columns if ok else ()):
        v = names[j]
        code = _field_code(model, name, v, env, utc)
        if code is None:
            ok = False
            break
        if fields[name].is_required():
            body.append(f"    f{j} = {f'need({code})' if code.startswith('money(') else code}")
            body.append(f"    fs.append({name!r})")
        else:  # an empty cell (or None, or 1C's empty date) takes the default, as Entity._blank_means_default says
            env[f"d{j}"] = fields[name].get_default(call_default_factory=False)
            dflt = f"d{j}" if fields[name].default_factory is None else f"{fields[name].default_factory.__name__}()"
            # a "no end" date (9999-12-31) is rare: its row takes the model's path, which alone decides it
            nodate = f" or {v} in nodates" if is_instant(fields[name]) else ""
            body.append(f"    if {v} is None or {v} == ''{nodate}:")
            body.append(f"        f{j} = {dflt}")
            body.append("    else:")
            body.append(f"        f{j} = {code}")
            body.append(f"        fs.append({name!r})")
        exprs[name] = f"f{j}"
    if ok and all(n in exprs or not f.is_required() for n, f in fields.items()):
        items = []
        for n, f in fields.items():
            if n in exprs:
                items.append(f"{n!r}: {exprs[n]}")
            elif f.default_factory is not None:
                items.append(f"{n!r}: {f.default_factory.__name__}()")
            else:
                env[f"default_{n}"] = f.default
                items.append(f"{n!r}: default_{n}")
        src = (
            "def convert(cells, tz):\n"
            "  try:\n"
            f"    ({''.join(x + ', ' for x in names)}) = cells\n"
            "    fs = []\n" + "\n".join(body) + "\n"
            f"    d = {{{', '.join(items)}}}\n"
            "  except (Slow, ValueError, TypeError, AttributeError, KeyError):\n"
            "    return None\n"
            "  m = new(model)\n"
            "  sa(m, '__dict__', d)\n"
            "  sa(m, '__pydantic_fields_set__', set(fs))\n"
            "  sa(m, '__pydantic_extra__', None)\n"
            "  sa(m, '__pydantic_private__', None)\n"
            "  return m\n"
        )
        exec(compile(src, f"<retainer row converter: {model.__name__}{columns}>", "exec"), env)  # from our models
        fn = env["convert"]
    else:
        fn = _never
    _CONVERTERS[key] = fn
    return fn


class _Slow(Exception):
    """A value the compiled converter leaves to the model."""


def _slow() -> Any:
    raise _Slow


def _want(value: Any, kind: type) -> Any:
    """What a field validator returned, if it is already what the model keeps (a dict: a copy, with
    text keys, as the model would make)."""
    if type(value) is not kind:
        raise _Slow
    if kind is dict:
        if not all(type(k) is str for k in value):
            raise _Slow
        return dict(value)
    return value


def _need(value: Any) -> Any:
    if value is None:
        raise _Slow
    return value


def _text(value: str) -> str:
    """Text the model keeps as it is: not empty and without surrounding whitespace (stripping is left
    to the model, whose idea of whitespace is not quite Python's)."""
    if type(value) is not str or not value or value[0].isspace() or value[-1].isspace():
        raise _Slow
    return value


def _never(cells: Any, tz: tzinfo) -> None:
    return None


@dataclass
class Batch:
    """Validated rows of one entity and where they came from (for error messages)."""

    entity: str
    models: list[Entity]
    file: str | None = None
    lines: Sequence[int] | None = None
    #: the fields the source gives (a CSV's header; the keys of a JSONL chunk's rows): None when not known
    columns: frozenset[str] | None = None

    def where(self, n: int) -> dict[str, Any]:
        return {"entity": self.entity, "file": self.file, "row": self.lines[n] if self.lines is not None else n}


class IdSet(Protocol):
    """Ids a load checks against: a set, or a store's lazily looked-up ids."""

    def __contains__(self, id: object) -> bool: ...
    def update(self, ids: Iterable[str]) -> None: ...


class Known:
    """Ids stored in a table (any container) and those a load adds: a small write into a large table
    copies no id set (a backtest's step carrying out a few hundred moves among 100k clients did)."""

    def __init__(self, stored: Container[str]) -> None:
        self.stored = stored
        self.added: set[str] = set()

    def __contains__(self, id: object) -> bool:
        return id in self.added or id in self.stored

    def update(self, ids: Iterable[str]) -> None:
        self.added.update(ids)


def check_batch(b: Batch, seen: set[str], existing_ids: IdSet | None, *, replace: bool) -> None:
    """Duplicate ids inside one write, or (for add) against what is stored, are errors."""
    for n, m in enumerate(b.models):
        if m.id in seen:
            raise DataError("duplicate id: an earlier row of this load has it too", id=m.id, field="id", **b.where(n))
        seen.add(m.id)
        if not replace and existing_ids is not None and m.id in existing_ids:
            raise DataError(
                "id already exists (to replace it: store.upsert(), or `retainer import --replace`)",
                id=m.id,
                field="id",
                **b.where(n),
            )


Pending = list[tuple[str, str, DataError]]  # (entity, referenced id, the error if it never appears)


def check_references(b: Batch, known: Mapping[str, IdSet], pending: Pending) -> None:
    """Every reference must name a stored row or one in this load. A manager's supervisor may come later
    in the same load, so those go to `pending` and are settled by `check_pending` before anything is
    written."""
    for (ent, field), target in REFERENCES.items():
        if ent != b.entity:
            continue
        ids = known[target]
        for n, m in enumerate(b.models):
            ref = getattr(m, field)
            if ref is None or ref in ids:
                continue
            error = DataError(f"unknown {target[:-1]} {ref!r}", id=m.id, field=field, **b.where(n))
            if target != ent:
                raise error
            pending.append((target, ref, error))


def check_pending(pending: Pending, known: Mapping[str, IdSet]) -> None:
    for target, ref, error in pending:
        if ref not in known[target]:
            raise error


def batches(rows: Mapping[str, Iterable[Any]], tz: tzinfo) -> list[Batch]:
    """Validate keyword rows (`clients=[...]`) into batches, referenced entities first."""
    for e, given in rows.items():
        if isinstance(given, Mapping | str | bytes | BaseModel):  # one row, not a list of them
            raise DataError(f"{e} is a list of rows (dicts or models), e.g. {e}=[{{...}}], "
                            f"not one {type(given).__name__}")  # fmt: skip
    return [Batch(e, validate_rows(e, rows[e], tz)) for e in order_entities(rows)]


def order_entities(rows: Mapping[str, Any]) -> list[str]:
    """Referenced entities first, whatever order the caller passed them in."""
    for name in rows:
        check_entity(name)
    return [e for e in ENTITIES if e in rows]
