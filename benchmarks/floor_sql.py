"""The floor of `retainer plan` when SQLite does the per-action work: the same output as floor.py, faster.

    python benchmarks/floor_sql.py benchmarks/data/retainer-100000.db > /dev/null

floor.py builds each action in a Python loop. This program (by a review helper that set out to beat it)
has SQLite decide, sort and write every action as JSON text with `format()` and `json_quote()` in one
statement; Python only computes the uuid5 ids and the least-loaded reassignment, as SQL functions
called while the sorted rows stream past, and writes the rows out one by one without holding the plan.
It covers the same cases as floor.py (and `tests/test_bench_floor.py` checks both against retainer):
its actions are retainer's, field for field. It is timed the same way, from process start to JSON
written. What it shows: a plan of this workload can be written in under a second in CPython, but only
when no Python object is built per action.
"""

from __future__ import annotations

import gc
import sqlite3
import sys
from _sha1 import sha1  # the builtin module: no OpenSSL import for 68,755 short digests
from bisect import bisect_left, insort
from datetime import date, datetime, timedelta
from operator import itemgetter

AS_OF = "2026-03-01T23:59:59Z"
NS = bytes.fromhex("6f1b3c2e8d4a5b7e9c1f2a3b4c5d6e7f")  # retainer.actions.NAMESPACE

# `LIMIT -1 OFFSET 0` keeps SQLite from flattening a subquery (it would compute the max of the seven
# columns again wherever it is named); the forgotten clients are materialised once, in key order, and
# read twice: their tasks first, then the releases.
SQL = """
WITH s AS MATERIALIZED (
  SELECT id, jid, substr(jid, 2, length(jid) - 2) AS jraw, name, mq, day, after, last,
    CAST(julianday(:today) - julianday(day) AS INTEGER) AS days,
    CASE WHEN last = '' THEN NULL
      WHEN length(last) = 20 AND substr(last, 20) = 'Z' AND substr(last, 11, 1) = 'T'
      THEN substr(last, 1, 19) || '+00:00' ELSE pyiso(last) END AS at,
    CASE WHEN day < CASE after WHEN 30 THEN :b44 ELSE :b74 END THEN NOT EXISTS (
      SELECT 1 FROM tasks t WHERE t.client_id = g.id AND t.due_at >= :d AND t.done_at IS NULL
      AND t.status = 'open' AND (t.created_at IS NULL OR t.created_at <= :asof)) ELSE 0 END AS rel
  FROM (
    SELECT id, json_quote(id) AS jid, name, json_quote(manager_id) AS mq, last, substr(anchor, 1, 10) AS day,
      after
    FROM (
      SELECT id, name, manager_id, after, last, CASE WHEN last = '' THEN created_at ELSE last END AS anchor
      FROM (
        SELECT c.id, c.name, c.manager_id, c.created_at,
          CASE WHEN instr(';' || c.tags || ';', ';key-account;') THEN 30 ELSE 60 END AS after,
          max(coalesce(l.touches_at, ''), coalesce(l.tasks_created_at, ''), coalesce(l.tasks_done_at, ''),
            coalesce(l.deals_created_at, ''), coalesce(l.deals_closed_at, ''), coalesce(l.invoices_issued_at, ''),
            coalesce(l.invoices_paid_at, '')) AS last
        FROM clients c LEFT JOIN retainer_latest l ON l.client_id = c.id
        WHERE c.status != 'archived' AND c.contact_policy IS NOT 'do_not_contact'
        LIMIT -1 OFFSET 0
      )
    ) WHERE anchor IS NOT NULL AND anchor < CASE after WHEN 30 THEN :b30 ELSE :b60 END
    LIMIT -1 OFFSET 0
  ) g
  ORDER BY id || ':'
)
SELECT CAST(format(:fh || '%s,"category":"retention","client_id":%s,"due_at":"%s","evidence":{"days_since_activity":%d,'
  || '"episode":"%s","last_activity_at":%s,"threshold":"%dd"},"id":"%s","key":"forgotten:%s:%s:create_task",'
  || '"options":null,"reason":"no activity for %d days (threshold %dd)","rule":"forgotten","task_kind":"call",'
  || '"title":%s,"type":"create_task"}',
    asg(rel, mq), jid, :due, days, day, json_quote(at), after,
    u5(CAST(:nsf || id || ':' || day || ':create_task' AS BLOB)), jraw, day, days, after,
    json_quote('No contact with ' || name || ' for ' || days || ' days')) AS BLOB)
FROM s
UNION ALL
SELECT CAST(format(:rh || ',"client_id":%s,"evidence":{"days_since_activity":%d,"episode":"%s","has_future_task":false,'
  || '"last_activity_at":%s,"threshold":"%dd+14d"},"from_manager_id":%s,"id":"%s","key":"release:%s:%s:reassign",'
  || '"reason":"no activity for %d days, past the threshold plus grace (%dd+14d) and no future task",'
  || '"rule":"release","to_manager_id":%s,"type":"reassign"}',
    jid, days, day, json_quote(at), after, mq, u5(CAST(:nsr || id || ':' || day || ':reassign' AS BLOB)), jraw, day,
    days, after, nextmove()) AS BLOB)
FROM s WHERE rel
"""

_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # the RFC 4122 variant bits


def u5(name: bytes) -> str:
    """uuid5 of NAMESPACE + key (the namespace is prefixed in SQL), spelled from the hex digest."""
    x = sha1(name).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def pyiso(instant: str) -> str:
    """An instant not in the store's usual `...Z` form, in the form retainer writes."""
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).isoformat()


def main(db_path: str) -> None:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    newest = db.execute("SELECT max(value) FROM retainer_newest").fetchone()[0]
    if newest is not None and newest > AS_OF:  # as floor.py: the summaries do not answer then
        sys.exit(f"a fact is dated {newest}, after as_of: the per-client summaries do not answer as of {AS_OF}")
    today = date.fromisoformat(AS_OF[:10])
    b = {d: (today - timedelta(days=d - 1)).isoformat() for d in (30, 60, 44, 74)}
    as_of = AS_OF.replace("Z", "+00:00")
    managers = db.execute("SELECT id, supervisor_id, active = 1, json_quote(id) FROM managers").fetchall()
    supervisors = {s for _, s, _, _ in managers if s is not None}
    active = {m for m, _, a, _ in managers if a}
    quoted = {m: q for m, _, _, q in managers}
    candidates = sorted(m for m in active if m not in supervisors)
    rank = {quoted[m]: i for i, m in enumerate(candidates)}
    cq = [quoted[m] for m in candidates]
    # non-archived clients per manager: every row through the covering index, minus the few excluded
    total = dict(db.execute("SELECT manager_id, count(*) FROM clients INDEXED BY idx_clients_manager_id "
                            "GROUP BY manager_id"))  # fmt: skip
    for m, n in db.execute("SELECT manager_id, count(*) FROM clients NOT INDEXED WHERE NOT coalesce(status != "
                           "'archived' AND (created_at IS NULL OR created_at <= ?), 0) GROUP BY manager_id", [AS_OF]):
        total[m] -= n
    # least loaded, ties by id: a sorted list of load << bits | rank, each move a bisection
    bits = max(len(candidates), 1).bit_length()
    mask, one = (1 << bits) - 1, 1 << bits
    loads = [total.get(m, 0) for m in candidates]
    order = sorted((loads[i] << bits) | i for i in range(len(candidates)))
    # a task for a manager who left goes to the supervisor, if active
    assignee = {q: quoted[s] if (not a and s in active) else q for m, s, a, q in managers}
    moves: list[str] = []

    def asg(release: int, mq: str) -> str:
        if not release:
            return assignee.get(mq, mq)
        me = rank.get(mq, -1)
        k = order[0]
        if k & mask == me:  # never to the current manager
            k = order.pop(1)
        else:
            del order[0]
        insort(order, k + one)
        if me >= 0:
            km = (loads[me] << bits) | me
            del order[bisect_left(order, km)]
            loads[me] -= 1
            insort(order, km - one)
        i = k & mask
        loads[i] += 1
        moves.append(cq[i])
        return cq[i]

    moved = iter(moves)
    db.create_function("asg", 2, asg)
    db.create_function("nextmove", 0, lambda: next(moved))
    db.create_function("u5", 1, u5, deterministic=True)
    db.create_function("pyiso", 1, pyiso, deterministic=True)
    cur = db.execute(SQL, {
        "today": AS_OF[:10], "b30": b[30], "b60": b[60], "b44": b[44], "b74": b[74], "d": AS_OF[:10] + "T00:00:00Z",
        "asof": AS_OF, "due": (today + timedelta(days=2)).isoformat(), "nsf": NS + b"forgotten:",
        "nsr": NS + b"release:", "fh": ',{"as_of":"' + as_of + '","assignee_id":',
        "rh": ',{"as_of":"' + as_of + '","category":"retention"',
    })  # fmt: skip
    out = sys.stdout.buffer
    out.write(b'{"actions":[')
    first = cur.fetchone()
    if first is not None:
        out.write(first[0][1:])  # each row starts with the comma that separates it from the one before
        out.writelines(map(itemgetter(0), cur))
    out.write(b'],"as_of":"' + as_of.encode() + b'"}')
    out.flush()


if __name__ == "__main__":
    gc.disable()  # nothing here forms a cycle
    main(sys.argv[1])
