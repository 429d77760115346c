"""Validation shared by every store: one place turns rows into models and errors into `DataError`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Protocol

from pydantic import ValidationError

from ..errors import DataError
from ..model import ENTITIES, Entity

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


def validate_rows(
    entity: str,
    rows: Iterable[Entity | Mapping[str, Any]],
    tz: tzinfo,
    *,
    file: str | None = None,
    lines: Sequence[int] | None = None,
) -> list[Entity]:
    """Models pass through; mappings are validated. Errors name the row (file line when known)."""
    model = check_entity(entity)
    out: list[Entity] = []
    ctx = {"tz": tz}
    for n, row in enumerate(rows):
        if isinstance(row, model):
            out.append(row)
            continue
        where = lines[n] if lines is not None else n
        if isinstance(row, Entity):
            raise DataError(
                f"expected a {model.__name__}, got a {type(row).__name__}", entity=entity, row=where, file=file
            )
        try:
            out.append(model.model_validate(row, context=ctx))
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
    return out


@dataclass
class Batch:
    """Validated rows of one entity and where they came from (for error messages)."""

    entity: str
    models: list[Entity]
    file: str | None = None
    lines: Sequence[int] | None = None

    def where(self, n: int) -> dict[str, Any]:
        return {"entity": self.entity, "file": self.file, "row": self.lines[n] if self.lines is not None else n}


class IdSet(Protocol):
    """Ids a load checks against: a set, or a store's lazily looked-up ids."""

    def __contains__(self, id: object) -> bool: ...
    def update(self, ids: Iterable[str]) -> None: ...


def check_batch(b: Batch, seen: set[str], existing_ids: IdSet | None, *, replace: bool) -> None:
    """Duplicate ids inside one write, or (for add) against what is stored, are errors."""
    for n, m in enumerate(b.models):
        if m.id in seen:
            raise DataError("duplicate id in the same batch", id=m.id, field="id", **b.where(n))
        seen.add(m.id)
        if not replace and existing_ids is not None and m.id in existing_ids:
            raise DataError("id already exists (to replace it: store.upsert(), or `retainer import --replace`)",
                            id=m.id, field="id", **b.where(n))


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
    return [Batch(e, validate_rows(e, rows[e], tz)) for e in order_entities(rows)]


def order_entities(rows: Mapping[str, Any]) -> list[str]:
    """Referenced entities first, whatever order the caller passed them in."""
    for name in rows:
        check_entity(name)
    return [e for e in ENTITIES if e in rows]
