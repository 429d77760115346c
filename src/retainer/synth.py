"""Seeded synthetic CRM: a realistic-looking CSV snapshot for `retainer demo` and the benchmarks.

The files follow the directory layout `retainer plan --data DIR` reads (DESIGN.md §9): one CSV per
entity, a header of model field names, an empty cell for a missing value, `;` between tags.

Why it looks the way it does:
- Activity is Pareto-skewed, so a few clients are very busy and many are sparse, as in real CRMs.
- About 15 % of clients go quiet for the last 60-300 days (no touch, task, deal or invoice event in
  that tail, and no open task due in the future), so a "forgotten after 60 days" rule fires for a
  realistic share; a few clients have no activity at all and are anchored on `created_at` only.
- Rows are streamed to the csv writers client by client: 100k clients / 2M touches run in bounded
  memory. Only a handful of numbers per client are kept in memory.
- Every file draws from its own random stream derived from the seed, so the same arguments give
  byte-identical files, and changing one volume (say touches) leaves the other files unchanged.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_AS_OF", "generate", "main"]

DEFAULT_AS_OF = date(2026, 3, 1)

DEALS_PER_CLIENT = 0.5
OFFERS_PER_CLIENT = 0.2
CONTRACTS_PER_CLIENT = 0.3

QUIET_SHARE = 0.14  # plus the archived clients, which are always quiet: about 15 % in all
QUIET_DAYS = (60, 300)
SILENT_SHARE = 0.012  # clients with no activity at all (plus ~30 % of prospects)

_DAY = 86_400
_WORK_START = 8 * 3600
_WORK_SPAN = 12 * 3600
_EXTRA_DAYS = 120  # day labels past as_of: future due dates and offer ends

_TEAMS = (
    "north",
    "key-accounts",
    "south",
    "east",
    "west",
    "central",
    "smb",
    "online",
    "export",
    "retail",
    "partners",
    "wholesale",
)
_HEAD_TEAM = "management"
_FIRST_F = (
    "Anna",
    "Maria",
    "Elena",
    "Olga",
    "Natalia",
    "Irina",
    "Svetlana",
    "Tatiana",
    "Yulia",
    "Ekaterina",
    "Daria",
    "Oksana",
    "Alina",
    "Victoria",
    "Sofia",
    "Polina",
)
_FIRST_M = (
    "Ivan",
    "Dmitry",
    "Sergey",
    "Alexey",
    "Andrey",
    "Pavel",
    "Mikhail",
    "Nikolai",
    "Oleg",
    "Maxim",
    "Artem",
    "Roman",
    "Taras",
    "Bogdan",
    "Yuri",
    "Denis",
)
_LAST = (
    "Petrov",
    "Ivanov",
    "Smirnov",
    "Kuznetsov",
    "Popov",
    "Volkov",
    "Sokolov",
    "Lebedev",
    "Kozlov",
    "Novikov",
    "Morozov",
    "Orlov",
    "Pavlov",
    "Fedorov",
    "Belov",
    "Zaitsev",
    "Egorov",
    "Bogdanov",
    "Melnikov",
    "Shevchenko",
    "Bondarenko",
    "Kovalenko",
    "Tkachenko",
    "Kravchenko",
)
_CO_PREFIX = (
    "Acme",
    "Northwind",
    "Baltic",
    "Volga",
    "Ural",
    "Sibir",
    "Delta",
    "Orion",
    "Vega",
    "Atlas",
    "Polar",
    "Granit",
    "Kedr",
    "Lotus",
    "Zenit",
    "Meridian",
    "Vector",
    "Alfa",
    "Neva",
    "Amur",
    "Krona",
    "Terra",
    "Aurora",
    "Fortis",
    "Nova",
    "Sever",
    "Vostok",
    "Titan",
    "Optima",
    "Prima",
    "Quantum",
    "Impuls",
    "Rubin",
    "Sapfir",
    "Elbrus",
    "Kama",
    "Dnipro",
    "Oka",
    "Bereg",
    "Sokol",
)
_CO_TRADE = (
    "Logistics",
    "Trading",
    "Foods",
    "Pharma",
    "Build",
    "Textiles",
    "Motors",
    "Electronics",
    "Agro",
    "Furniture",
    "Print",
    "Media",
    "Energy",
    "Steel",
    "Plastics",
    "Chemicals",
    "Retail",
    "Wholesale",
    "Tech",
    "Systems",
    "Packaging",
    "Medical",
    "Auto Parts",
    "Travel",
    "Security",
    "Consulting",
    "Cleaning",
    "Dairy",
    "Bakery",
    "Water",
)
_CO_SUFFIX = ("LLC", "LLC", "LLC", "Ltd", "Group", "JSC", "Inc", "& Co")

# (kind, direction, channel) with weights: what a sales team's timeline is made of.
_TOUCH_MIX: tuple[tuple[tuple[str, str, str], float], ...] = (
    (("call", "outbound", "phone"), 22.0),
    (("call", "inbound", "phone"), 9.0),
    (("email", "outbound", "email"), 17.0),
    (("email", "inbound", "email"), 12.0),
    (("message", "inbound", "whatsapp"), 4.0),
    (("message", "outbound", "whatsapp"), 3.0),
    (("message", "inbound", "telegram"), 3.0),
    (("message", "outbound", "telegram"), 2.0),
    (("meeting", "outbound", "office"), 2.5),
    (("meeting", "outbound", "video"), 3.5),
    (("sms", "outbound", "sms"), 4.0),
    (("comment", "internal", ""), 12.0),
    (("document", "outbound", "edo"), 3.5),
    (("document", "internal", ""), 2.5),
)
_TASK_KINDS_CRM = (
    "call",
    "call",
    "call",
    "follow_up",
    "follow_up",
    "meeting",
    "send_quote",
    "send_documents",
    "collect_payment",
)
_TASK_KINDS_RETAINER = ("retention_call", "follow_up", "collect_payment")
_OFFER_CATEGORIES = (("retention", 0.35), ("development", 0.45), ("service", 0.20))


class _Clock:
    """Turns second offsets from the window start into ISO strings without datetime objects.

    Formatting ~3M timestamps with `datetime.isoformat` would dominate the run time; two lookup
    tables (day labels, time-of-day labels) make it a string concatenation.
    """

    def __init__(self, as_of: date, days: int) -> None:
        self.start = as_of - timedelta(days=days)
        self.days = days
        self.day_labels = [(self.start + timedelta(days=i)).isoformat() for i in range(days + _EXTRA_DAYS)]
        self.tod_labels = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]
        self.workdays = [i for i in range(days) if (self.start + timedelta(days=i)).weekday() < 5]

    def ts(self, seconds: int) -> str:
        d, s = divmod(seconds, _DAY)
        return f"{self.day_labels[d]}T{self.tod_labels[s]}"

    def day(self, index: int) -> str:
        return self.day_labels[index]

    def pick_day(self, rng: random.Random, lo: int, hi: int) -> int:
        """A day in [lo, hi), a working day 93 % of the time (people rarely log on weekends)."""
        if hi - lo <= 1:
            return lo
        wd = self.workdays
        i0, i1 = bisect_left(wd, lo), bisect_left(wd, hi)
        if i1 > i0 and rng.random() < 0.93:
            return wd[i0 + int(rng.random() * (i1 - i0))]
        return lo + int(rng.random() * (hi - lo))

    def pick_instant(self, rng: random.Random, lo: int, hi: int) -> int:
        return self.pick_day(rng, lo, hi) * _DAY + _WORK_START + int(rng.random() * _WORK_SPAN)

    @staticmethod
    def later(rng: random.Random, t: int, days_after: int, hi: int) -> int | None:
        """An instant in working hours `days_after` days after t, strictly after t and before day hi.

        None when that day is not before hi (the follow-up would fall into a quiet tail or after as_of).
        """
        day = t // _DAY + days_after
        if day >= hi:
            return None
        at = day * _DAY + _WORK_START + int(rng.random() * _WORK_SPAN)
        return at if at > t else t + 300 + int(rng.random() * 3 * 3600)


class _Manager:
    """One sales manager: org chart position and how many clients the assignment leans on them."""

    __slots__ = ("active", "id", "load", "max_clients", "name", "supervisor_id", "team", "weight")

    def __init__(self, index: int, name: str, team: str, supervisor_id: str, weight: float) -> None:
        self.id = f"m{index}"
        self.name = name
        self.team = team
        self.supervisor_id = supervisor_id
        self.weight = weight
        self.active = True
        self.max_clients = ""
        self.load = 0


class _Clients:
    """Per-client facts every file needs, as parallel lists (a few MB at 100k clients)."""

    def __init__(self) -> None:
        self.manager: list[int] = []
        self.status: list[str] = []
        self.weight: list[float] = []  # Pareto activity weight, 0 for clients without activity
        self.lo: list[int] = []  # first day activity may happen on (the day after creation)
        self.hi: list[int] = []  # activity stops before this day; < window days when quiet
        self.scale: list[float] = []  # typical invoice amount


def _counts(rng: random.Random, weights: list[float], total: float) -> list[int]:
    """Split `total` rows over clients in proportion to weights, randomly rounding each share."""
    s = sum(weights)
    if s <= 0 or total <= 0:
        return [0] * len(weights)
    k = total / s
    out: list[int] = []
    for w in weights:
        x = w * k
        n = int(x)
        if rng.random() < x - n:
            n += 1
        out.append(n)
    return out


def _money(x: float) -> str:
    return f"{max(x, 1.0):.2f}"


def _add_months(d: date, months: int) -> date:
    """Calendar months, clamping the day (a term from Jan 31 ends on Feb 28/29)."""
    y, m = divmod(d.month - 1 + months, 12)
    day = d.day
    while True:
        try:
            return date(d.year + y, m + 1, day)
        except ValueError:
            day -= 1


@contextmanager
def _csv(out: Path, stem: str, header: tuple[str, ...]) -> Iterator[Any]:
    """A csv writer on a temp file renamed into place on success, so a failed run leaves no half file."""
    final = out / f"{stem}.csv"
    tmp = out / f".{stem}.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8", buffering=1 << 20) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        try:
            yield writer
        except BaseException:
            fh.close()
            os.unlink(tmp)
            raise
    os.replace(tmp, final)


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"retainer-synth:{seed}:{stream}")


def _build_managers(rng: random.Random, count: int) -> list[_Manager]:
    """Head of sales m0, team leads m1..mT reporting to m0, members reporting to their lead."""
    teams = max(1, min(len(_TEAMS), (count - 1) // 4))
    combos = [(f, ln + "a" if not ln.endswith("ko") else ln) for f in _FIRST_F for ln in _LAST]
    combos += [(f, ln) for f in _FIRST_M for ln in _LAST]
    rng.shuffle(combos)
    names = [f"{f} {ln}" for f, ln in combos[:count]]
    for i in range(len(names), count):
        f, ln = combos[i % len(combos)]
        names.append(f"{f} {ln} {i // len(combos) + 1}")
    managers = [_Manager(0, names[0], _HEAD_TEAM, "", 0.15)]
    for i in range(1, count):
        if i <= teams:
            managers.append(_Manager(i, names[i], _TEAMS[i - 1], "m0", 0.6))
        else:
            t = (i - teams - 1) % teams
            managers.append(_Manager(i, names[i], _TEAMS[t], f"m{t + 1}", 0.7 + 0.6 * rng.random()))
    members = list(range(teams + 1, count))
    if count >= 6:
        managers[-1].weight = 0.0  # a new hire with no clients yet: a natural reassignment target
        members.pop()
    inactive = max(1 if count >= 6 else 0, round(0.02 * count))
    for i in rng.sample(members, min(inactive, len(members))):
        managers[i].active = False
    return managers


_ClientRow = tuple[str, str, str, int]  # tags, contact_policy, cost_to_serve, created_at (seconds)


def _plan_clients(rng: random.Random, n: int, managers: list[_Manager], days: int) -> tuple[_Clients, list[_ClientRow]]:
    """Decide each client's shape; returns the shared per-client facts and the clients.csv extras."""
    cl = _Clients()
    key_pool = [i for i, m in enumerate(managers) if m.team == "key-accounts" and m.weight > 0]
    general_w = [m.weight * (0.5 if m.team == "key-accounts" else 1.0) for m in managers]
    key_w = [managers[i].weight for i in key_pool]

    def cumulative(ws: list[float]) -> list[float]:
        out, s = [], 0.0
        for w in ws:
            s += w
            out.append(s)
        return out

    general_cum, key_cum = cumulative(general_w), cumulative(key_w)
    extras: list[_ClientRow] = []
    quiet_max = min(QUIET_DAYS[1], days - 25)
    for _ in range(n):
        u = rng.random()
        status = "archived" if u < 0.01 else "prospect" if u < 0.04 else "active"
        tags: list[str] = []
        if status != "prospect":
            if rng.random() < 0.05:
                tags.append("key-account")
            if rng.random() < 0.03:
                tags.append("vip")
            if rng.random() < 0.10:
                tags.append("wholesale")
            if rng.random() < 0.02:
                tags.append("partner")
        u = rng.random()
        policy = "do_not_contact" if u < 0.01 else "no_marketing" if u < 0.03 else "ok"
        if "key-account" in tags and key_pool:
            mgr = key_pool[min(len(key_pool) - 1, bisect_right(key_cum, rng.random() * key_cum[-1]))]
        else:
            mgr = min(len(managers) - 1, bisect_right(general_cum, rng.random() * general_cum[-1]))
        managers[mgr].load += status != "archived"

        weight = min(rng.paretovariate(1.6), 80.0)
        silent = rng.random() < SILENT_SHARE or (status == "prospect" and rng.random() < 0.3)
        quiet = (status == "archived" or rng.random() < QUIET_SHARE) and quiet_max >= QUIET_DAYS[0]
        u = rng.random()
        if silent:
            weight, created = 0.0, int((days - 1) * u)
            hi = created + 1
        elif quiet:
            hi = days - rng.randint(QUIET_DAYS[0], quiet_max)
            created = int((hi - 15) * u * u)
        else:
            hi = days
            created = min(int(max(1, days - 10) * u * u), days - 2)
        scale = rng.lognormvariate(7.0, 0.8) * (3.0 if "key-account" in tags else 1.0)
        cost = 40.0 + 12.0 * weight * rng.lognormvariate(0.0, 0.4) + (150.0 if "key-account" in tags else 0.0)
        cl.manager.append(mgr)
        cl.status.append(status)
        cl.weight.append(weight)
        cl.lo.append(created + 1)
        cl.hi.append(hi)
        cl.scale.append(scale)
        created_at = created * _DAY + _WORK_START + int(rng.random() * _WORK_SPAN)
        extras.append((";".join(tags), policy, _money(cost), created_at))
    return cl, extras


def _company_name(i: int, rng: random.Random) -> str:
    """Unique by construction: (prefix, trade, block) is a bijection of the index."""
    np_, nt = len(_CO_PREFIX), len(_CO_TRADE)
    p, q, block = i % np_, (i // np_) % nt, i // (np_ * nt)
    t = (q * (np_ + 1) + p) % nt  # np_ + 1 = 41 is coprime with 30: a bijection over q for each p
    base = f"{_CO_PREFIX[p]} {_CO_TRADE[t]}" + (f" {block + 1}" if block else "")
    return f"{base} {_CO_SUFFIX[int(rng.random() * len(_CO_SUFFIX))]}"


def _span_weights(cl: _Clients, flat: float, *, skip_prospects: bool = False, by_span: bool = True) -> list[float]:
    """Row weights per client: a mix of the Pareto weight and a flat share, times the active span."""
    mean = sum(cl.weight) / max(1, len(cl.weight))
    out: list[float] = []
    for w, lo, hi, st in zip(cl.weight, cl.lo, cl.hi, cl.status, strict=True):
        if w <= 0 or (skip_prospects and st == "prospect") or hi <= lo:
            out.append(0.0)
            continue
        x = flat * mean + (1.0 - flat) * w
        out.append(x * (hi - lo) if by_span else x)
    return out


def _write_touches(out: Path, rng: random.Random, cl: _Clients, mids: list[str], clock: _Clock, total: float) -> int:
    counts = _counts(rng, _span_weights(cl, 0.0), total)
    mix = [m for m, _ in _TOUCH_MIX]
    cum: list[float] = []
    s = 0.0
    for _, w in _TOUCH_MIX:
        s += w
        cum.append(s)
    wd, days_l, tod_l = clock.workdays, clock.day_labels, clock.tod_labels
    rand, choices, nm = rng.random, rng.choices, len(mids)
    tid = 0
    with _csv(out, "touches", ("id", "client_id", "at", "kind", "direction", "manager_id", "channel")) as w:
        for c, n in enumerate(counts):
            if not n:
                continue
            lo, hi = cl.lo[c], cl.hi[c]
            i0, i1 = bisect_left(wd, lo), bisect_left(wd, hi)
            nwd, nd = i1 - i0, hi - lo
            keys = []
            for _ in range(n):
                day = wd[i0 + int(rand() * nwd)] if nwd and rand() < 0.93 else lo + int(rand() * nd)
                keys.append(day * _DAY + _WORK_START + int(rand() * _WORK_SPAN))
            keys.sort()
            cid, own = f"c{c}", mids[cl.manager[c]]
            rows = []
            for key, (kind, direction, channel) in zip(keys, choices(mix, cum_weights=cum, k=n), strict=True):
                u = rand()
                mgr = own if u < 0.92 else "" if u < 0.96 else mids[int(rand() * nm)]
                d, sec = divmod(key, _DAY)
                rows.append((f"t{tid}", cid, f"{days_l[d]}T{tod_l[sec]}", kind, direction, mgr, channel))
                tid += 1
            w.writerows(rows)
    return tid


def _write_tasks(out: Path, rng: random.Random, cl: _Clients, mids: list[str], clock: _Clock, total: float) -> int:
    days = clock.days
    counts = _counts(rng, _span_weights(cl, 0.3), total)
    rand, nm = rng.random, len(mids)
    tid = 0
    header = ("id", "client_id", "manager_id", "created_at", "due_at", "done_at", "status", "kind", "source")
    with _csv(out, "tasks", header) as w:
        for c, n in enumerate(counts):
            if not n:
                continue
            lo, hi = cl.lo[c], cl.hi[c]
            cid, own = f"c{c}", mids[cl.manager[c]]
            rows: list[tuple[int, str, str, str, str, str, str]] = []
            for _ in range(n):
                retainer = rand() < 0.05
                kinds = _TASK_KINDS_RETAINER if retainer else _TASK_KINDS_CRM
                kind = kinds[int(rand() * len(kinds))]
                u = rand()
                if hi < days and u < 0.115:  # a quiet client has no open task due in the future
                    u = 0.25 + 0.75 * rand()
                done = ""
                if u < 0.115:
                    status = "open"
                    created = clock.pick_instant(rng, max(lo, days - 30), hi)
                    due = days + 1 + int(rand() * 30)
                elif u < 0.215:
                    status = "open"
                    created = clock.pick_instant(rng, lo, min(hi, days - 1))
                    due = min(created // _DAY + 1 + int(rand() * 14), days - 1)
                elif u < 0.265:
                    status = "cancelled"
                    created = clock.pick_instant(rng, lo, hi)
                    due = created // _DAY + 1 + int(rand() * 14)
                else:
                    status = "done"
                    created = clock.pick_instant(rng, lo, hi)
                    due = created // _DAY + int(rand() * 14)
                    at = clock.later(rng, created, int(rand() * rand() * 10), hi)
                    done = clock.ts(created + 600 + int(rand() * 3600) if at is None else at)
                mgr = own if rand() < 0.95 else mids[int(rand() * nm)]
                source = "retainer" if retainer else "crm"
                rows.append((created, mgr, clock.day(due), done, status, kind, source))
            rows.sort(key=lambda r: r[0])
            for created, mgr, due_s, done, status, kind, source in rows:
                w.writerow((f"k{tid}", cid, mgr, clock.ts(created), due_s, done, status, kind, source))
                tid += 1
    return tid


def _write_deals(out: Path, rng: random.Random, cl: _Clients, clock: _Clock, total: float) -> int:
    counts = _counts(rng, _span_weights(cl, 0.5), total)
    rand = rng.random
    did = 0
    with _csv(out, "deals", ("id", "client_id", "created_at", "closed_at", "status", "amount")) as w:
        for c, n in enumerate(counts):
            if not n:
                continue
            lo, hi, prospect = cl.lo[c], cl.hi[c], cl.status[c] == "prospect"
            rows = []
            for _ in range(n):
                created = clock.pick_instant(rng, lo, hi)
                u = rand()
                status = "open" if u < 0.18 else "lost" if u < 0.50 or prospect else "won"
                closed = ""
                if status != "open":
                    at = clock.later(rng, created, 1 + int(rand() * rand() * 90), hi)
                    if at is None:
                        status = "open"
                    else:
                        closed = clock.ts(at)
                amount = cl.scale[c] * rng.lognormvariate(1.0, 0.5)
                rows.append((created, closed, status, _money(amount)))
            rows.sort()
            for created, closed, status, amount in rows:
                w.writerow((f"d{did}", f"c{c}", clock.ts(created), closed, status, amount))
                did += 1
    return did


def _write_invoices(out: Path, rng: random.Random, cl: _Clients, clock: _Clock, total: float) -> int:
    counts = _counts(rng, _span_weights(cl, 0.5, skip_prospects=True), total)
    rand = rng.random
    iid = 0
    header = ("id", "client_id", "issued_at", "due_at", "amount", "paid_at", "paid_amount")
    with _csv(out, "invoices", header) as w:
        for c, n in enumerate(counts):
            if not n:
                continue
            lo, hi, scale = cl.lo[c], cl.hi[c], cl.scale[c]
            rows = []
            for _ in range(n):
                amount = round(max(scale * rng.lognormvariate(0.0, 0.4), 10.0), 2)
                u = rand()
                if u < 0.90:
                    delay = min(int(rng.lognormvariate(1.6, 0.8)), 60)
                    issued = clock.pick_instant(rng, lo, max(lo + 1, hi - delay - 1))
                    at = clock.later(rng, issued, delay, hi)
                    paid_at = issued + 600 + int(rand() * 3600) if at is None else at
                    paid = amount if u < 0.88 else min(round(amount * (0.2 + 0.7 * rand()), 2), amount - 0.01)
                    rows.append((issued, f"{amount:.2f}", clock.ts(paid_at), f"{paid:.2f}"))
                else:
                    recent = rand() < 0.7
                    issued = clock.pick_instant(rng, max(lo, hi - 40) if recent else lo, hi)
                    rows.append((issued, f"{amount:.2f}", "", ""))
            rows.sort()
            for issued, amount_s, paid_s, paid_amount in rows:
                w.writerow(
                    (
                        f"i{iid}",
                        f"c{c}",
                        clock.ts(issued),
                        clock.day(issued // _DAY + 14),
                        amount_s,
                        paid_s,
                        paid_amount,
                    )
                )
                iid += 1
    return iid


def _write_offers(out: Path, rng: random.Random, cl: _Clients, clock: _Clock, total: float) -> int:
    counts = _counts(rng, _span_weights(cl, 0.6), total)
    cats = [c for c, _ in _OFFER_CATEGORIES]
    cum = [sum(w for _, w in _OFFER_CATEGORIES[: i + 1]) for i in range(len(_OFFER_CATEGORIES))]
    rand = rng.random
    oid = 0
    with _csv(out, "offers", ("id", "client_id", "category", "made_at", "ends_at", "amount")) as w:
        for c, n in enumerate(counts):
            if not n:
                continue
            lo, hi, scale = cl.lo[c], cl.hi[c], cl.scale[c]
            rows = []
            for cat in rng.choices(cats, cum_weights=cum, k=n):
                made = clock.pick_instant(rng, lo, hi)
                ends = f"{clock.day(made // _DAY + 14 + int(rand() * 46))}T23:59:59"
                if cat == "retention":
                    amount = _money(scale * (0.05 + 0.15 * rand()))
                elif cat == "development":
                    amount = _money(scale * (0.1 + 0.4 * rand()))
                else:
                    amount = _money(scale * 0.05 * rand()) if rand() < 0.4 else ""
                rows.append((made, cat, ends, amount))
            rows.sort()
            for made, cat, ends, amount in rows:
                w.writerow((f"o{oid}", f"c{c}", cat, clock.ts(made), ends, amount))
                oid += 1
    return oid


def _write_contracts(out: Path, rng: random.Random, cl: _Clients, clock: _Clock, total: float) -> int:
    counts = _counts(rng, _span_weights(cl, 0.5, skip_prospects=True, by_span=False), total)
    rand = rng.random
    kid = 0
    with _csv(out, "contracts", ("id", "client_id", "starts_at", "ends_at", "monthly_amount")) as w:
        for c, n in enumerate(counts):
            if not n:
                continue
            lo, hi, scale = cl.lo[c], cl.hi[c], cl.scale[c]
            starts = sorted(clock.pick_day(rng, lo, hi) for _ in range(n))
            for day in starts:
                start = clock.start + timedelta(days=day)
                end = _add_months(start, 12)
                w.writerow(
                    (
                        f"ct{kid}",
                        f"c{c}",
                        f"{start.isoformat()}T00:00:00",
                        f"{end.isoformat()}T00:00:00",
                        _money(scale * (0.3 + 0.7 * rand())),
                    )
                )
                kid += 1
    return kid


def generate(
    out_dir: str | Path,
    *,
    clients: int = 3000,
    managers: int | None = None,
    seed: int = 7,
    as_of: date = DEFAULT_AS_OF,
    years: float = 1.0,
    touches_per_client: float = 20.0,
    tasks_per_client: float = 2.0,
    invoices_per_client: float = 5.0,
) -> dict[str, int]:
    """Write clients.csv managers.csv touches.csv tasks.csv deals.csv invoices.csv offers.csv contracts.csv
    into out_dir (created if missing); return row counts per file stem.

    Event timestamps are naive ISO datetimes in [as_of - years, as_of); only due dates and term ends
    (task/invoice `due_at`, offer and contract `ends_at`) may lie after as_of. The per-client rates
    are totals over the whole window, not per year.
    """
    if clients < 1:
        raise ValueError("clients must be at least 1")
    days = round(years * 365.25)
    if days < 30:
        raise ValueError("years must cover at least 30 days")
    n_managers = max(3, clients // 333) if managers is None else managers
    if n_managers < 1:
        raise ValueError("managers must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(as_of, days)

    managers_ = _build_managers(_rng(seed, "managers"), n_managers)
    crng = _rng(seed, "clients")
    cl, extras = _plan_clients(crng, clients, managers_, days)
    mids = [m.id for m in managers_]

    mrng = _rng(seed, "max_clients")
    avg_load = max(1, clients // n_managers)
    for m in managers_[1:]:
        if mrng.random() < 0.35:
            expected = m.load if m.weight > 0 else avg_load  # a new hire is planned at the average
            m.max_clients = str((3 * max(expected, 1) + 1) // 2)
    with _csv(out, "managers", ("id", "name", "active", "supervisor_id", "max_clients", "team")) as w:
        for m in managers_:
            active = "true" if m.active else "false"
            w.writerow((m.id, m.name, active, m.supervisor_id, m.max_clients, m.team))
    nrng = _rng(seed, "names")
    header = (
        "id",
        "manager_id",
        "name",
        "status",
        "tags",
        "contact_policy",
        "abc_class",
        "cost_to_serve",
        "created_at",
    )
    with _csv(out, "clients", header) as w:
        for c, (tags, policy, cost, created) in enumerate(extras):
            w.writerow(
                (
                    f"c{c}",
                    mids[cl.manager[c]],
                    _company_name(c, nrng),
                    cl.status[c],
                    tags,
                    policy,
                    "",
                    cost,
                    clock.ts(created),
                )
            )
    del extras

    writers: list[tuple[str, Callable[[], int]]] = [
        ("touches", lambda: _write_touches(out, _rng(seed, "touches"), cl, mids, clock, clients * touches_per_client)),
        ("tasks", lambda: _write_tasks(out, _rng(seed, "tasks"), cl, mids, clock, clients * tasks_per_client)),
        ("deals", lambda: _write_deals(out, _rng(seed, "deals"), cl, clock, clients * DEALS_PER_CLIENT)),
        ("invoices", lambda: _write_invoices(out, _rng(seed, "invoices"), cl, clock, clients * invoices_per_client)),
        ("offers", lambda: _write_offers(out, _rng(seed, "offers"), cl, clock, clients * OFFERS_PER_CLIENT)),
        (
            "contracts",
            lambda: _write_contracts(out, _rng(seed, "contracts"), cl, clock, clients * CONTRACTS_PER_CLIENT),
        ),
    ]
    counts = {"managers": n_managers, "clients": clients}
    for stem, write in writers:
        counts[stem] = write()
    return counts


def main(argv: list[str] | None = None) -> int:
    """`python -m retainer.synth`: the benchmark data set without going through the CLI."""
    ap = argparse.ArgumentParser(
        prog="python -m retainer.synth", description="Write a seeded synthetic CRM as CSV files."
    )
    ap.add_argument("--clients", type=int, default=3000, help="number of clients (default 3000)")
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    ap.add_argument("--years", type=float, default=1.0, help="history window in years (default 1)")
    ap.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=DEFAULT_AS_OF,
        help=f"end of the history, exclusive (default {DEFAULT_AS_OF.isoformat()})",
    )
    args = ap.parse_args(argv)
    try:
        counts = generate(args.out, clients=args.clients, seed=args.seed, years=args.years, as_of=args.as_of)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
