"""Backtests: what a rule set would have done over past months, night by night.

Each step is a real `Engine.run` as of that date against the CRM's facts (facts dated after the step
are invisible, as in every plan) with a fresh in-memory ledger, so duplicates, grace periods and
round-robin behave as in production, and the store's own ledger is never touched. The CRM's reaction
is unknown, so actions are not applied to the facts (a reassigned client keeps its manager in the
data; the ledger remembers the reassignment).
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

from dateutil.relativedelta import relativedelta

from . import charts
from .actions import Action
from .adapters.base import CallbackHandler
from .engine import Engine
from .errors import RetainerError
from .rules.loader import RuleSet
from .stores.base import Store
from .stores.memory import MemoryStore
from .timeutil import parse_duration

__all__ = ["Backtest", "backtest", "steps_between"]

#: what a backtest keeps to itself: the ledger and cursors (fresh), and clients and managers (read once,
#: since hundreds of steps ask for the same rows as of different dates)
_LOCAL = frozenset({
    "run_lock", "ledger_status", "commit_run", "finish_run", "runs", "ledger", "begin_attempts",
    "finish_attempts", "requeue", "set_outcome", "get_cursor", "set_cursor",
    "clients", "managers", "manager_loads",
})  # fmt: skip


class FreshLedger:
    """Facts from `base`, except clients and managers, copied once into a private in-memory store that
    also holds a fresh ledger; the in-memory store answers "as of" questions as every store does."""

    def __init__(self, base: Store) -> None:
        self._base = base
        self._local = MemoryStore(f"backtest:{base.url}", timezone=base.tz)
        self._local.add(managers=list(base.iter("managers")), clients=list(base.iter("clients")))
        self.url = base.url
        self.tz = base.tz

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local if name in _LOCAL else self._base, name)


def steps_between(start: date, end: date, step: str) -> list[date]:
    """`1d`, `1w`, `2w`, `1mo`: the dates from `start` to `end` inclusive."""
    try:
        d = parse_duration(step)
    except ValueError as exc:
        raise RetainerError(f"--step {step!r}: {exc}") from None
    if d.is_hours or (not d.days and not d.months):
        raise RetainerError(f"--step {step!r}: use days, weeks or months (1d, 1w, 1mo)")
    if end < start:
        raise RetainerError(f"--to {end} is before --from {start}")
    out: list[date] = []
    k = 0
    while (cur := start + relativedelta(months=d.months * k, days=d.days * k)) <= end:
        out.append(cur)  # counted from the start each time: monthly steps keep their day (31, 28, 31)
        k += 1
    return out


def _managers_of(a: Action, client_manager: Mapping[str, str]) -> list[tuple[str, str]]:
    """(manager, what it means for them) for one action: the load it puts on people."""
    match a.type:
        case "create_task":
            return [(a.assignee_id or "?", "tasks")]  # type: ignore[attr-defined]
        case "reassign":
            return [(a.from_manager_id, "lost"), (a.to_manager_id or "?", "gained")]  # type: ignore[attr-defined]
        case "notify_manager" | "escalate":
            return [(a.to_manager_id or "?", "notifications")]  # type: ignore[attr-defined]
    return [(client_manager.get(a.client_id, "?"), "client actions")]  # messages, tags, offers to their clients


@dataclass
class Backtest:
    """The outcome of one backtest: new actions per step, per rule, per manager."""

    label: str
    days: list[date]
    new: list[tuple[date, Action]] = field(default_factory=list)
    suppressed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, reason) -> count
    client_manager: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    # ------------------------------------------------------------ views

    def per_rule(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for _, a in self.new:
            out[a.rule][a.type] += 1
        for (rule, reason), n in self.suppressed.items():
            out[rule][f"suppressed:{reason}"] += n
        return {r: dict(sorted(c.items())) for r, c in sorted(out.items())}

    def per_manager(self) -> dict[str, dict[str, int]]:
        """tasks, gained, lost, notifications, client actions (messages, tags, offers for their clients),
        and the peak of tasks in one step."""
        totals: dict[str, Counter[str]] = defaultdict(Counter)
        daily: dict[tuple[str, date], int] = Counter()
        for day, a in self.new:
            for m, what in _managers_of(a, self.client_manager):
                totals[m][what] += 1
                if what == "tasks":
                    daily[(m, day)] += 1
        for (m, _), n in daily.items():
            totals[m]["peak_tasks_per_step"] = max(totals[m]["peak_tasks_per_step"], n)
        return {m: dict(c) for m, c in sorted(totals.items(), key=lambda kv: (-kv[1]["tasks"], kv[0]))}

    def timeline(self) -> dict[str, list[int]]:
        """New actions per step, per rule."""
        index = {d: i for i, d in enumerate(self.days)}
        rules = sorted({a.rule for _, a in self.new})
        out = {r: [0] * len(self.days) for r in rules}
        for day, a in self.new:
            out[a.rule][index[day]] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "from": self.days[0].isoformat() if self.days else None,
            "to": self.days[-1].isoformat() if self.days else None,
            "steps": len(self.days),
            "seconds": round(self.seconds, 3),
            "actions": len(self.new),
            "per_rule": self.per_rule(),
            "per_manager": self.per_manager(),
            "timeline": {"days": [d.isoformat() for d in self.days], **self.timeline()},
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        counts: Counter[tuple[str, str, str, str, str]] = Counter()
        for day, a in self.new:
            for m, what in _managers_of(a, self.client_manager):
                counts[(day.isoformat(), a.rule, a.type, m, what)] += 1
        return [
            {"rules": self.label, "date": d, "rule": r, "type": t, "manager": m, "role": w, "count": n}
            for (d, r, t, m, w), n in sorted(counts.items())
        ]


def backtest(
    rules: RuleSet,
    store: Store,
    start: date,
    end: date,
    *,
    step: str = "1d",
    label: str = "rules",
    progress: Callable[[int, int], None] | None = None,
) -> Backtest:
    """Replay `rules` over [start, end] every `step`, each step a run against a fresh ledger."""
    days = steps_between(start, end, step)
    overlay = FreshLedger(store)
    engine = Engine(rules, overlay)  # type: ignore[arg-type]
    result = Backtest(label, days)
    sink = CallbackHandler(lambda a: None)  # delivered at once: the ledger stays small and exact
    t0 = time.perf_counter()
    for i, day in enumerate(days):
        a = engine.as_of(day)
        report = engine.run(day, handlers=sink, clock=lambda a=a: a.instant, sleep=lambda s: None)
        result.new += [(day, x) for x in report.committed]
        for s in report.plan.suppressed:
            if s.reason_code != "duplicate":
                result.suppressed[(s.action.rule, s.reason_code)] += 1
        if progress:
            progress(i + 1, len(days))
    result.seconds = time.perf_counter() - t0
    if days:
        result.client_manager = {c.id: c.manager_id for c in store.clients(engine.as_of(days[-1]).instant)}
    return result


# ---------------------------------------------------------------- output


def write_csv(results: list[Backtest], path: Path) -> None:
    rows = [r for b in results for r in b.csv_rows()]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["rules", "date", "rule", "type", "manager", "role", "count"])
        w.writeheader()
        w.writerows(rows)


def csv_text(results: list[Backtest]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["rules", "date", "rule", "type", "manager", "role", "count"])
    w.writeheader()
    w.writerows(r for b in results for r in b.csv_rows())
    return buf.getvalue()


def render_html(results: list[Backtest]) -> str:
    """Workload over time per rule, per-manager load, and the A/B difference when two rule sets ran."""
    first = results[0]
    labels = [d.isoformat() for d in first.days]
    body: list[str] = []
    if len(results) == 2:
        a, b = results
        body.append("<h2>A/B: new actions per step</h2>")
        body.append(charts.line_chart({f"{a.label} (A)": [sum(v) for v in zip(*a.timeline().values(), strict=True)]
                                       if a.timeline() else [0] * len(labels),
                                       f"{b.label} (B)": [sum(v) for v in zip(*b.timeline().values(), strict=True)]
                                       if b.timeline() else [0] * len(labels)},
                                      labels, title="all rules, new actions per step"))  # fmt: skip
        rows = []
        pa, pb = a.per_rule(), b.per_rule()
        for rule in sorted(set(pa) | set(pb)):
            for kind in sorted(set(pa.get(rule, {})) | set(pb.get(rule, {}))):
                x, y = pa.get(rule, {}).get(kind, 0), pb.get(rule, {}).get(kind, 0)
                rows.append((rule, kind, x, y, y - x))
        body.append(charts.table(["rule", "what", "A", "B", "B − A"], rows, caption="per rule"))
        ma, mb = a.per_manager(), b.per_manager()
        top = sorted(set(ma) | set(mb), key=lambda m: -(ma.get(m, {}).get("tasks", 0) + mb.get(m, {}).get("tasks", 0)))
        body.append(charts.bar_chart({f"{a.label} (A)": [(m, ma.get(m, {}).get("tasks", 0)) for m in top[:20]],
                                      f"{b.label} (B)": [(m, mb.get(m, {}).get("tasks", 0)) for m in top[:20]]},
                                     title="tasks per manager (top 20)"))  # fmt: skip
    for res in results:
        tag = f" — {escape(res.label)}" if len(results) > 1 else ""
        body.append(f"<h2>Workload over time{tag}</h2>")
        body.append(charts.line_chart(res.timeline() or {"no actions": [0] * len(labels)}, labels,
                                      title="new actions per step, per rule"))  # fmt: skip
        body.append(charts.table(["rule", "what", "count"],
                                 [(r, k, n) for r, kinds in res.per_rule().items() for k, n in kinds.items()],
                                 caption="per rule"))  # fmt: skip
        pm = res.per_manager()
        body.append(charts.bar_chart({"tasks": [(m, v.get("tasks", 0)) for m, v in list(pm.items())[:20]]},
                                     title="tasks per manager (top 20)"))  # fmt: skip
        cols = ["tasks", "peak_tasks_per_step", "gained", "lost", "notifications", "client actions"]
        body.append(charts.table(["manager", *cols], [(m, *(v.get(c, 0) for c in cols)) for m, v in pm.items()],
                                 caption="per manager"))  # fmt: skip
    meta = (f"{first.days[0]} to {first.days[-1]}, {len(first.days)} steps; "
            + "; ".join(f"{r.label}: {len(r.new)} actions in {r.seconds:.1f}s" for r in results))  # fmt: skip
    return charts.page("retainer backtest", "\n".join(body), meta=meta)
