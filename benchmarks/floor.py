"""A floor for `retainer plan` in CPython: the least a program that builds each action in Python does.

    python benchmarks/floor.py benchmarks/data/retainer-100000.db > /dev/null   # time it from the shell
    python benchmarks/run.py                                                     # runs it in a fresh process

floor_sql.py writes the same actions faster, with SQLite doing the per-action work.

A hand-written program that does a strict subset of what `retainer plan -f json` must do on the reference
workload, each step in the cheapest way this machine offers: read only the columns the two rules need
from retainer's own SQLite store (the per-client latest-activity summary included, so no fact table is
scanned except tasks for "no future task"), decide with plain comparisons of ISO text, and write each
action as JSON with its key, uuid5 id, reason, title, evidence and a least-loaded new manager. It
validates nothing, explains nothing, checks no ledger, applies no policy, leaves out time zones and
per-client thresholds from attributes, and reports no held-back action. Its (rule, client) pairs are the
tuned query's, and its actions are retainer's, field for field: run.py checks both.

It is timed from process start to JSON written, like `retainer plan`: the work every plan of this
workload has to do, done in a Python loop as cheaply as we know how. A plan path that builds an object
per action cannot take less on this machine.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import sqlite3
import sys
from datetime import date, datetime, timedelta

import orjson

AS_OF = "2026-03-01T23:59:59Z"
NS = bytes.fromhex("6f1b3c2e8d4a5b7e9c1f2a3b4c5d6e7f")  # retainer.actions.NAMESPACE


def uuid5(key: str) -> str:
    h = bytearray(hashlib.sha1(NS + key.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def main(db_path: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    today = date.fromisoformat(AS_OF[:10])
    # the first instant too recent for each threshold: a client is forgotten when its activity is before it
    bound = {d: (today - timedelta(days=d - 1)).isoformat() for d in (30, 60, 44, 74)}
    newest = db.execute("SELECT max(value) FROM retainer_newest").fetchone()[0]
    if newest is not None and newest > AS_OF:  # as retainer does, which then scans the fact tables instead
        sys.exit(f"a fact is dated {newest}, after as_of: the per-client summaries do not answer as of {AS_OF}")
    sql = (
        "SELECT c.id, c.name, c.manager_id, c.tags, c.created_at, c.contact_policy, "
        "max(coalesce(l.touches_at, ''), coalesce(l.tasks_created_at, ''), coalesce(l.tasks_done_at, ''), "
        "coalesce(l.deals_created_at, ''), coalesce(l.deals_closed_at, ''), coalesce(l.invoices_issued_at, ''), "
        "coalesce(l.invoices_paid_at, '')) "
        "FROM clients c LEFT JOIN retainer_latest l ON l.client_id = c.id WHERE c.status != 'archived' ORDER BY c.id"
    )
    rows = db.execute(sql).fetchall()
    future = {  # an open task due on or after as_of's day (no fact is dated after as_of: see above)
        cid
        for (cid,) in db.execute(
            "SELECT DISTINCT client_id FROM tasks WHERE due_at >= :day AND done_at IS NULL AND status = 'open' "
            "AND (created_at IS NULL OR created_at <= :asof)",
            {"day": AS_OF[:10] + "T00:00:00Z", "asof": AS_OF},
        )
    }
    # pass 1: who is forgotten, and who is released (in key order, each to the least loaded active manager
    # other than the current one, never a supervisor; the loads include this plan's moves)
    loads: dict[str, int] = dict(
        db.execute("SELECT manager_id, count(*) FROM clients WHERE status != 'archived' "
                   "AND (created_at IS NULL OR created_at <= ?) GROUP BY manager_id", [AS_OF]).fetchall()
    )  # fmt: skip
    supervisors = {m for (m,) in db.execute("SELECT supervisor_id FROM managers WHERE supervisor_id IS NOT NULL")}
    supervisor_of = dict(db.execute("SELECT id, supervisor_id FROM managers").fetchall())
    active = {m for (m,) in db.execute("SELECT id FROM managers WHERE active = 1")}
    candidates = {m for m in active if m not in supervisors}
    heap = [(loads.get(m, 0), m) for m in candidates]
    heapq.heapify(heap)
    forgotten: list[tuple[str, str, str, str, int, bool]] = []
    blocked: set[str] = set()
    release: list[tuple[str, str, str]] = []
    moved: dict[str, str] = {}
    for cid, name, manager, tags, created, policy, last in rows:
        anchor = last or created
        if not anchor:
            continue
        after = 30 if "key-account" in (tags or "").split(";") else 60
        if anchor[:10] >= bound[after]:
            continue
        if policy == "do_not_contact":
            blocked.add(cid)
        forgotten.append((cid, name, manager, anchor, after, bool(last)))
        if anchor[:10] < bound[after + 14] and cid not in future:
            release.append((f"release:{cid}:{anchor[:10]}:", cid, manager))
    for _key, cid, manager in sorted(release):  # key order: "c1003:" sorts after "c10031:"
        if cid in blocked:  # held back (do_not_contact): matched, but nobody moves
            continue
        skipped = []
        while True:  # stale entries (a load changed since) are re-filed at their real load
            load, m = heap[0]
            if load != loads.get(m, 0):
                heapq.heapreplace(heap, (loads.get(m, 0), m))
            elif m == manager:
                skipped.append(heapq.heappop(heap))
            else:
                break
        for e in skipped:
            heapq.heappush(heap, e)
        loads[m] = loads.get(m, 0) + 1
        loads[manager] = loads.get(manager, 0) - 1
        if manager in candidates:  # a lower load, visible to the heap
            heapq.heappush(heap, (loads[manager], manager))
        moved[cid] = m
    # pass 2: the actions (a released client's task goes to its new manager)
    as_of = AS_OF.replace("Z", "+00:00")
    due = (today + timedelta(days=2)).isoformat()
    out: list[dict[str, object]] = []
    pairs: list[tuple[str, str]] = []
    released = {cid for _key, cid, _m in release}
    for cid, name, manager, anchor, after, active_ever in forgotten:
        day = anchor[:10]
        days = (today - date.fromisoformat(day)).days
        # evidence shows the last activity, none for a client never active (counted from created_at)
        at = datetime.fromisoformat(anchor.replace("Z", "+00:00")).isoformat() if active_ever else None
        evidence = {"days_since_activity": days, "episode": day, "last_activity_at": at, "threshold": f"{after}d"}
        pairs.append(("forgotten", cid))
        if cid in released:
            pairs.append(("release", cid))
        if cid in blocked:
            continue
        key = f"forgotten:{cid}:{day}:create_task"
        new = moved.get(cid)
        if new is None and manager not in active and supervisor_of.get(manager) in active:
            new = supervisor_of[manager]  # the manager has left: the task goes to the supervisor
        out.append({"as_of": as_of, "assignee_id": new or manager, "category": "retention", "client_id": cid,
                    "due_at": due, "evidence": evidence, "id": uuid5(key), "key": key, "options": None,
                    "reason": f"no activity for {days} days (threshold {after}d)", "rule": "forgotten",
                    "task_kind": "call", "title": f"No contact with {name} for {days} days",
                    "type": "create_task"})  # fmt: skip
        if cid not in moved:
            continue
        new = moved[cid]
        key = f"release:{cid}:{day}:reassign"
        out.append({"as_of": as_of, "category": "retention", "client_id": cid,
                    "evidence": {**evidence, "has_future_task": False, "threshold": f"{after}d+14d"},
                    "from_manager_id": manager, "id": uuid5(key), "key": key,
                    "reason": f"no activity for {days} days, past the threshold plus grace ({after}d+14d) and no "
                              "future task", "rule": "release", "to_manager_id": new, "type": "reassign"})  # fmt: skip
    out.sort(key=lambda a: a["key"])  # type: ignore[arg-type,return-value]
    sys.stdout.buffer.write(orjson.dumps({"actions": out, "as_of": as_of}, option=orjson.OPT_SORT_KEYS))
    return pairs


if __name__ == "__main__":
    gc.disable()  # as retainer does while it builds a plan: nothing here forms a cycle
    got = main(sys.argv[1])
    if len(sys.argv) > 2:  # the (rule, client) pairs, for run.py's comparison with the tuned query
        with open(sys.argv[2], "w") as f:
            f.writelines(f"{r},{c}\n" for r, c in sorted(got))
