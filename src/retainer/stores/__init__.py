"""Stores are chosen by URL through one registry keyed by scheme (`memory://`, `sqlite:///crm.db`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, timedelta, tzinfo
from datetime import timezone as _timezone
from pathlib import Path
from typing import Final

from ..errors import ArgumentError, StoreError, redact
from .base import AggSpec, Pred, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["SCHEMES", "AggSpec", "MemoryStore", "Pred", "SQLiteStore", "Store", "open_store", "register"]


def _sqlite(rest: str, url: str, tz: tzinfo, create: bool = True) -> Store:
    # sqlite:///crm.db -> "crm.db" (relative), sqlite:////var/crm.db -> "/var/crm.db"
    if not rest.startswith("/"):
        raise StoreError(f"bad store URL {redact(url)!r}: write sqlite:///relative.db or sqlite:////absolute.db")
    path = rest[1:]
    if not path:
        raise StoreError(f"bad store URL {redact(url)!r}: no database file given")
    if path != ":memory:":
        if not Path(path).parent.exists():
            raise StoreError(f"bad store URL {redact(url)!r}: folder {str(Path(path).parent)!r} does not exist")
        if not create and not Path(path).exists():
            raise StoreError(f"database not found: {path} (from {redact(url)!r})")
    return SQLiteStore(path, timezone=tz, url=url, create=create)


def _memory(rest: str, url: str, tz: tzinfo, create: bool = True) -> Store:
    if not create:
        raise StoreError(
            f"{redact(url)!r} starts empty in every process: give a .db file, a sqlite:/// URL or a data folder"
        )
    return MemoryStore(url, timezone=tz)


Factory = Callable[[str, str, tzinfo, bool], Store]
SCHEMES: dict[str, Factory] = {"memory": _memory, "sqlite": _sqlite}


def register(scheme: str, factory: Factory) -> None:
    """Plug in a backend: `factory(rest_of_url, url, timezone, create)` returns a Store; with `create`
    false it must refuse a store that does not exist yet instead of making an empty one."""
    SCHEMES[scheme] = factory


#: `timezone`'s default: the store reads naive times as UTC (`datetime.UTC` itself, which the fast paths
#: know), and is marked `zone_defaulted`, so an engine whose rules count days in another zone says so
DEFAULT_TZ: Final = _timezone(timedelta(0), "UTC")


def open_store(url: str | os.PathLike[str], *, timezone: tzinfo | str = DEFAULT_TZ, create: bool = True) -> Store:
    """Open a store from a URL; a bare path ending in .db/.sqlite/.sqlite3 (text or a `pathlib.Path`) means SQLite.

    `timezone` is how naive timestamps in added rows are read (the CLI passes the rule set's); UTC when
    not given.
    `create=False` is for readers: a mistyped path is an error, not a new empty CRM with nothing to do.
    """
    from ..timeutil import get_tz, zone_from_name

    if timezone is DEFAULT_TZ:
        tz: tzinfo = UTC
    elif isinstance(timezone, str):
        try:
            tz = get_tz(timezone)
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
    elif isinstance(timezone, tzinfo):
        tz = timezone
    else:  # None would read naive timestamps in whatever zone the machine is set to
        raise ArgumentError(
            f"timezone must be a zone name or a tzinfo, not {timezone!r}: pass the rule set's, "
            "e.g. open_store(url, timezone=rules.timezone)"
        )
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise ArgumentError(f"a store URL is text (memory://, sqlite:///crm.db) or a path, not {url!r}")
    store = _open(url, tz, create)
    if timezone is DEFAULT_TZ:
        # a store that recorded the zone its facts were written in reads new ones in it too (a nightly import
        # without --rules); otherwise UTC, and an engine counting days elsewhere warns of it
        recorded = getattr(store, "recorded_zone", None)
        if recorded is None:
            store.zone_defaulted = True  # type: ignore[attr-defined]
        else:
            try:
                store.tz = zone_from_name(recorded)  # type: ignore[attr-defined]
            except ValueError:  # never quietly UTC: the day of a 23:30 call would move
                store.close()
                raise StoreError(f"{redact(url)} records its facts' zone as {recorded!r}, which this retainer cannot "
                                 f"read: open it with timezone= that zone") from None
    return store


def _open(url: str, tz: tzinfo, create: bool) -> Store:
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            return _sqlite("/" + url, f"sqlite:///{url}", tz, create)
        raise StoreError(
            f"bad store URL {redact(url)!r}: expected memory:// or sqlite:///path.db "
            f"(known schemes: {', '.join(sorted(SCHEMES))})"
        )
    scheme, rest = url.split("://", 1)
    factory = SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(SCHEMES))
        raise StoreError(f"unknown store scheme {scheme!r} in {redact(url)!r}; known: {known}")
    return factory(rest, url, tz, create)
