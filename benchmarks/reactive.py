"""Per-event latency of reactive mode: `Session.post(event)` over 10k events, p50/p99, with a breakdown.

    python benchmarks/reactive.py                                  # 10k clients, benchmarks/rules.yaml
    python benchmarks/reactive.py --rules examples/rules/full.yaml --events 2000
    python benchmarks/reactive.py --db benchmarks/data/retainer-100000.db

The store is COPIED first (into --work, default /tmp/retainer-reactive-bench): files under
benchmarks/data are never modified. The session is warmed by a nightly tick as of --as-of (which commits
that night's plan, as production would), then fed a seeded mix of events from that instant on, a few
seconds apart: inbound and outbound touches (60 %), completed tasks (20 %), payments of unpaid invoices
(20 %), each for a random client. Also timed, for comparison: `Engine.plan(as_of, clients=[c])` for the
same clients without the session's caches.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import retainer  # noqa: E402
from retainer.reactive import Session  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000


class _NoAnalyze:
    """A connection that ignores `ANALYZE` (for --skip-analyze only); everything else goes through."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, *a: Any) -> Any:
        return None if sql.strip().upper() == "ANALYZE" else self._conn.execute(sql, *a)

    def __enter__(self) -> Any:
        return self._conn.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._conn.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default=str(ROOT / "benchmarks" / "data" / "retainer-10000.db"))
    ap.add_argument("--rules", default=str(ROOT / "benchmarks" / "rules.yaml"))
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--as-of", default="2026-03-01T00:00:00Z")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", default="/tmp/retainer-reactive-bench")
    ap.add_argument("--baseline", type=int, default=300, help="partial plans timed without the session")
    ap.add_argument("--skip-analyze", action="store_true",
                    help="projection: the SQLite store without its ANALYZE after every write (a requested change)")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / Path(args.db).name
    from retainer.stores.sqlite import store_files

    for f in store_files(db):  # a log left by an earlier run would be replayed onto the fresh copy
        f.unlink(missing_ok=True)
    shutil.copyfile(args.db, db)
    rules = retainer.load_rules(args.rules)
    store = retainer.open_store(f"sqlite:///{db}", timezone=rules.timezone)
    if args.skip_analyze:
        store.conn = _NoAnalyze(store.conn)  # type: ignore[attr-defined]
    session = Session(rules, store)
    t = time.perf_counter()
    warm = session.tick(args.as_of)
    tick_s = time.perf_counter() - t
    start = warm.as_of

    rnd = random.Random(args.seed)
    clients = sorted(c.id for c in store.clients(start))
    tasks = sorted(x.id for x in store.iter("tasks") if x.done_at is None and x.status == "open")  # type: ignore[attr-defined]
    unpaid = sorted(x.id for x in store.iter("invoices") if x.paid_at is None)  # type: ignore[attr-defined]
    rnd.shuffle(tasks)
    rnd.shuffle(unpaid)
    events: list[dict[str, Any]] = []
    for n in range(args.events):
        when = start + timedelta(seconds=5 * (n + 1))
        r = rnd.random()
        if r < 0.2 and tasks:
            events.append({"type": "task_done", "id": tasks.pop(), "at": when})
        elif r < 0.4 and unpaid:
            events.append({"type": "invoice_paid", "id": unpaid.pop(), "at": when})
        else:
            events.append({"type": "touch", "id": f"bench-t{n}", "client_id": rnd.choice(clients), "at": when,
                           "kind": "call", "direction": rnd.choice(["inbound", "outbound"])})

    total: list[float] = []
    parts: dict[str, list[float]] = {}
    committed = 0
    kinds: dict[str, list[float]] = {}
    for ev in events:
        t0 = time.perf_counter()
        r = session.post(ev)
        dt = time.perf_counter() - t0
        total.append(dt)
        kinds.setdefault(ev["type"], []).append(dt)
        committed += len(r.committed)
        for k, v in r.timings.items():
            if k != "total":
                parts.setdefault(k, []).append(v)

    # the same partial plans without the session (no cached managers and loads)
    engine = retainer.Engine(rules, store)
    base = []
    for c in rnd.sample(clients, min(args.baseline, len(clients))):
        t0 = time.perf_counter()
        engine.plan(events[-1]["at"], clients=[c])
        base.append(time.perf_counter() - t0)

    out = {
        "db": Path(args.db).name,
        "rules": Path(args.rules).name,
        "skip_analyze": args.skip_analyze,
        "clients": len(clients),
        "events": len(events),
        "warm_tick_s": round(tick_s, 2),
        "committed_by_events": committed,
        "post_ms": {"p50": round(pct(total, 50), 2), "p99": round(pct(total, 99), 2),
                    "mean": round(statistics.fmean(total) * 1000, 2), "max": round(max(total) * 1000, 2)},
        "by_event_type_ms": {k: {"n": len(v), "p50": round(pct(v, 50), 2), "p99": round(pct(v, 99), 2)}
                             for k, v in sorted(kinds.items())},
        "breakdown_ms": {k: {"n": len(v), "p50": round(pct(v, 50), 3), "p99": round(pct(v, 99), 3)}
                         for k, v in sorted(parts.items())},
        "engine_plan_one_client_without_session_ms": (
            {"p50": round(pct(base, 50), 2), "p99": round(pct(base, 99), 2)} if base else None  # --baseline 0
        ),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
