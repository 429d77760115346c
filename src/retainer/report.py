"""The supervisor's digest (seed 001): one page instead of clicking through every client.

Forgotten clients per manager, releases (and those nobody could take), escalations, debtors with
amounts, churn reasons reported back through the ledger, and what is stuck in delivery. Built from
one plan as of a date (duplicates included: a client already tasked last week is still forgotten
today) and the store's ledger; rendered as Markdown and as a self-contained HTML page.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from html import escape
from typing import Any

from . import charts
from .actions import Action
from .engine import Engine
from .errors import printable
from .ledger import unapplied_moves
from .rules.features import norm_reason
from .stores.base import AggSpec, Pred

__all__ = ["Digest", "Section", "digest"]


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    note: str = ""
    chart: list[tuple[str, float]] = field(default_factory=list)  # bar chart: label -> value
    chart_title: str = ""


@dataclass
class Digest:
    as_of: datetime
    rules: str
    sections: list[Section]

    def to_markdown(self) -> str:
        out = [f"# Supervisor's digest as of {self.as_of.date().isoformat()}", "", f"Rules: {_md(self.rules)}", ""]
        for s in self.sections:
            out += [f"## {s.title}", ""]
            if s.note:
                out += [_md_note(s.note), ""]
            if s.rows:
                out.append("| " + " | ".join(s.headers) + " |")
                out.append("|" + "|".join("---:" if _numeric(s, i) else "---" for i in range(len(s.headers))) + "|")
                out += ["| " + " | ".join(_md(_cell(c)) for c in r) + " |" for r in s.rows]
                out.append("")
        return "\n".join(out)

    def to_html(self) -> str:
        body = []
        for s in self.sections:
            body.append(f"<h2>{escape(s.title)}</h2>")
            if s.note:
                body.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(s.note)) + "</p>")
            if s.chart:
                body.append(charts.bar_chart({s.title: s.chart[:20]}, title=s.chart_title or s.title))
            if s.rows:
                body.append(charts.table(s.headers, [[_cell(c) if isinstance(c, Decimal) else c for c in r]
                                                     for r in s.rows]))  # fmt: skip
        return charts.page(f"Supervisor's digest as of {self.as_of.date().isoformat()}", "\n".join(body),
                           meta=f"rules: {self.rules}")  # fmt: skip


def _numeric(s: Section, i: int) -> bool:
    return bool(s.rows) and isinstance(s.rows[0][i], int | float | Decimal)


#: Markdown's inline markup, backslash-escaped in CRM text: a client named `[Re-login](https://evil/login)`
#: or `![i](http://evil/p.png)` became a phishing link and a tracking image in the supervisor's digest.
_MD_MARKUP = re.compile(r"([\\`*_\[\]!~|])")


def _md(text: str) -> str:
    """A table cell of Markdown: names come from the CRM, so a `|` must not split the row and markup must
    show as text (a digest is mailed or pasted into a wiki, which renders HTML in Markdown)."""
    text = _MD_MARKUP.sub(r"\\\1", printable(text))  # and no ESC sequence for whoever cats the file
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", " ").replace("\n", " "))  # fmt: skip


def _md_note(note: str) -> str:
    """A section's note, which may name managers: CRM text escaped as in cells, its own `code` kept."""
    return "".join(part if part.startswith("`") else _md(part) for part in re.split(r"(`[^`]+`)", note))


def _cell(c: Any) -> str:
    if isinstance(c, Decimal):
        return f"{c:,.2f}"
    return str(c)


def digest(engine: Engine, as_of: str | date | datetime, *, top: int = 30, label: str = "rules") -> Digest:
    a = engine.as_of(as_of)
    plan = engine.plan(a.instant)
    store = engine.store
    kinds = {r.id: r.kind for r in engine.rules.rules}
    managers = {m.id: m for m in store.managers()}
    clients = {c.id: c for c in store.clients(a.instant)}

    def name(mid: str | None) -> str:
        m = managers.get(mid or "")
        return f"{m.name} ({m.id})" if m and m.name else (mid or "?")

    # due today: the plan's actions and those an earlier run already committed (its duplicates);
    # held: what a policy held back, with why
    due = [*plan.actions, *(s.action for s in plan.suppressed if s.reason_code == "duplicate")]
    held = [(s.action, s) for s in plan.suppressed if s.reason_code != "duplicate"]
    sections: list[Section] = []

    # releases: tonight's, and those committed earlier (duplicates now) with whom they went to and when
    moves = [x for x in due if x.type == "reassign"]
    new = {x.id for x in plan.actions if x.type == "reassign"}
    earlier = {e.id: e for e in store.ledger(ids=[x.id for x in moves if x.id not in new])}  # type: ignore[attr-defined]
    # one the CRM refused (dead) or that was cancelled before it went out moved nobody
    failed = {i for i, e in earlier.items() if e.void}
    released = [(earlier[x.id].action if x.id in earlier else x, earlier[x.id].as_of if x.id in earlier else plan.as_of)
                for x in moves if x.id not in failed]  # fmt: skip
    # a release the CRM has not carried out yet, tonight's or an earlier night's (whether or not its rule
    # still matches): the client is its new manager's (the data says the old one)
    named = {x.client_id for x in due if x.client_id} | {x.client_id for x, _ in held if x.client_id}  # not a manager's
    owner = unapplied_moves(store, [clients[c] for c in sorted(named) if c in clients], a.instant)  # type: ignore[index]
    # tonight's moves: from the manager the data shows, or, released again, from the one an earlier move gave
    owner |= {x.client_id: x.to_manager_id for x in plan.actions  # type: ignore[attr-defined]
              if x.type == "reassign" and x.to_manager_id and x.client_id in clients  # type: ignore[attr-defined]
              and x.from_manager_id in (clients[x.client_id].manager_id, owner.get(x.client_id))}  # type: ignore[attr-defined]  # fmt: skip

    def manager_of(cid: str | None) -> str:
        return owner.get(cid) or (clients[cid].manager_id if cid in clients else "?")  # type: ignore[index]

    # forgotten clients per manager: every client a forgotten-kind rule matches today, once, whatever the
    # rule's actions (a task, a note to the manager, two of them) and however many forgotten rules match it
    def days(x: Action) -> int:
        return int(x.evidence.get("days_since_activity") or 0)

    waiting = [x for x, s in held if s.reason_code != "do_not_contact"]  # a cap or a full day: still forgotten
    first: dict[str, Action] = {}  # client -> its first match, in key order
    for x in [*due, *waiting]:
        if kinds.get(x.rule) == "forgotten" and x.client_id is not None:
            first.setdefault(x.client_id, x)
    forgotten: dict[str, list[Action]] = defaultdict(list)
    for cid, x in first.items():
        forgotten[manager_of(cid)].append(x)
    per_manager = sorted(((name(m), len(xs)) for m, xs in forgotten.items()), key=lambda kv: (-kv[1], kv[0]))
    longest = sorted(first.values(), key=lambda x: (-days(x), x.client_id or ""))[:top]
    sections.append(Section(
        "Forgotten clients per manager", ["manager", "forgotten clients"], [list(r) for r in per_manager],
        note=f"{sum(len(v) for v in forgotten.values())} client(s) past their threshold today, whether an earlier "
             "run already created their task, tonight's run creates it, or a policy (a manager's full day) holds "
             "it back (do-not-contact clients are not listed).",
        chart=per_manager,
    ))  # fmt: skip
    sections.append(Section(
        f"Longest forgotten (top {top})", ["client", "manager", "days without activity", "threshold"],
        [[_client(clients, x.client_id), name(manager_of(x.client_id)), days(x), x.evidence.get("threshold", "")]
         for x in longest],
    ))  # fmt: skip

    # releases (tonight's first, then the latest), and the clients nobody could take
    released.sort(key=lambda xa: (-xa[1].timestamp(), _natural(xa[0].client_id)))
    tonight = sum(1 for _, at in released if at == plan.as_of)
    stuck = [(x, s) for x, s in held if x.type == "reassign"]
    note = (f"{tonight} client(s) released to a more responsive manager tonight, {len(released) - tonight} "
            "earlier and still forgotten.")  # fmt: skip
    if stuck:
        note += (f" {len(stuck)} could not be released ("
                 + ", ".join(f"{k}: {v}" for k, v in Counter(s.reason_code for _, s in stuck).items()) + ").")
    sections.append(Section(
        "Releases", ["client", "from", "to", "rule", "released on"],
        [[_client(clients, x.client_id), name(x.from_manager_id), name(x.to_manager_id) if x.to_manager_id  # type: ignore[attr-defined]
          else "?", x.rule, at.astimezone(a.tz).date().isoformat()] for x, at in released[:top]],
        note=note,
    ))  # fmt: skip

    esc = [x for x in due if x.type == "escalate"]
    untold = Counter(x.about_manager_id for x, s in held  # type: ignore[attr-defined]
                     if x.type == "escalate" and s.reason_code == "no_recipient")  # fmt: skip
    note = f"{len(esc)} escalation(s) to supervisors."
    if untold:
        note += (f" {sum(untold.values())} could not be sent because the manager has no supervisor: "
                 + ", ".join(f"{name(m)} ({n})" for m, n in untold.most_common()) + ".")  # fmt: skip
    sections.append(Section(
        "Escalations", ["client", "about manager", "to", "reason"],
        [[_client(clients, x.client_id), name(x.about_manager_id), name(x.to_manager_id), x.reason]  # type: ignore[attr-defined]
         for x in esc[:top]],
        note=note,
    ))  # fmt: skip

    # debtors: overdue outstanding amounts, from the facts (no rule needed)
    # due before as_of's day began, as the rules' overdue features count it: due today is not overdue yet
    overdue = (Pred("due_at", "lt", a.day_start(a.date)), Pred("outstanding", "gt", Decimal(0)))
    owed, oldest = store.aggregate(
        [AggSpec("invoices", "sum", "outstanding", overdue), AggSpec("invoices", "min", "due_at", overdue)], a.instant
    )
    debtors = sorted(owed.items(), key=lambda kv: (-kv[1], kv[0]))
    # a debtor released to another manager whose move the data does not show yet is that manager's, as in
    # the sections above (it was the old one's here, and the new one's among the forgotten)
    unnamed = [clients[c] for c in sorted(owed) if c in clients and c not in owner]  # type: ignore[index]
    owner |= unapplied_moves(store, unnamed, a.instant)
    by_manager: Counter[str] = Counter()
    for cid, amount in debtors:
        if cid in clients:
            by_manager[name(manager_of(cid))] += amount  # type: ignore[assignment]
    sections.append(Section(
        f"Debtors (top {top})", ["client", "manager", "overdue amount", "overdue since", "days"],
        [[_client(clients, cid), name(manager_of(cid)), amount,
          oldest[cid].astimezone(a.tz).date().isoformat(), (a.date - oldest[cid].astimezone(a.tz).date()).days]
         for cid, amount in debtors[:top]],
        note=f"{len(debtors)} client(s) owe {sum(owed.values(), Decimal(0)):,.2f} past due.",
        chart=[(m, float(v)) for m, v in by_manager.most_common()],
        chart_title="overdue amount per manager (all debtors)",
    ))  # fmt: skip

    # churn reasons the host reported back (record_outcome / `retainer actions outcome ... churn_reason=...`),
    # and the actions committed, as of the date: a digest of a past date counted what later runs committed
    reasons: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for e in store.ledger():
        if e.as_of > a.instant:
            continue
        statuses["cancelled" if e.cancelled else e.status] += 1
        # whenever the answer came, as the plan behind this digest's escalations reads it (a past date's page
        # said "no churn reasons recorded yet" beside an escalation naming one)
        if e.outcome and e.outcome.get("churn_reason"):
            reasons[norm_reason(e.outcome["churn_reason"])] += 1  # "Price" and "price" are one answer
    sections.append(Section(
        "Churn reasons", ["reason", "answers"], [[r, n] for r, n in reasons.most_common()],
        note="" if reasons else "No churn reasons recorded yet: the CRM reports them with "
             "`retainer actions outcome --data DB ID churn_reason=...` or Engine.record_outcome.",
        chart=reasons.most_common(),
    ))  # fmt: skip
    sections.append(Section(
        "Delivery", ["status", "actions"],
        [[s, statuses[s]] for s in ("pending", "failed", "dead", "done", "cancelled") if statuses[s]],
        note="Actions committed by runs, by delivery status; dead ones need a person: "
             "`retainer actions list --data DB --status dead`." if statuses else "No run has committed actions yet.",
    ))  # fmt: skip
    return Digest(plan.as_of, label, sections)


def _natural(cid: str | None) -> tuple[Any, ...]:
    """c22 before c100: ids sorted by their text and numbers, as a person reads them."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", cid or ""))


def _client(clients: dict[str, Any], cid: str | None) -> str:
    if cid is None:
        return "— (about the manager)"  # manager-level rules (overdue_tasks)
    c = clients.get(cid)
    return f"{c.name} ({cid})" if c is not None and c.name else cid
