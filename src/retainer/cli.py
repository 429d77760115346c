"""`retainer` command line: a thin layer over the Python API.

Exit codes: 0 ok, 1 checks or tests failed, 2 bad input (rules, data, dates, URLs, arguments).
Machine-readable output goes to stdout; messages, progress and errors go to stderr.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gc
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from . import __version__
from .engine import Engine
from .errors import DataError, RetainerError, RulesError, StoreError, printable, redact
from .plan import Plan
from .rules.loader import RuleSet, load_rules
from .rules.schema import json_schema

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

def _flags_without_metavar(params: list[Any]) -> list[Any]:
    """typer's help shows a flag as taking a value (`--dry-run <bool>`, `--help <bool>`), and `--dry-run true`
    then fails: a flag's help shows no value."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _OnceGroup(TyperGroup):
    """Refuses an option given twice that takes one value (`--as-of 2026-03-01 --as-of 2026-04-15`): click
    keeps the last, so a wrapper that appended its own `--as-of` committed another night without a word."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            _flags_without_metavar(cmd.get_params(ctx))
        if cmd is not None and not hasattr(cmd, "commands"):  # a command, not a group of them
            single = {o: p.name for p in cmd.params if p.param_type_name == "option" and not p.multiple
                      and not getattr(p, "is_flag", False) and not getattr(p, "count", False)
                      for o in p.opts}  # fmt: skip
            seen: dict[str, str] = {}
            for a in rest:
                if a == "--":
                    break
                opt = a.split("=", 1)[0]
                if (p := single.get(opt)) is not None:
                    if p in seen:
                        _fail(f"{seen[p]} is given twice; give it once")
                    seen[p] = opt
        return name, cmd, rest


app = typer.Typer(
    name="retainer",
    cls=_OnceGroup,
    help="Keep CRM clients from being forgotten: evaluate retention rules as of a date and plan actions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _Lazy:
    """A rich Console made on first use: rich costs 40 ms of every command's start, and the nightly path
    (`plan -f json`, `run` with nothing to say) prints no table."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


@functools.cache
def _plain_table() -> type[Table]:
    """A rich Table whose cells are plain text: a client's name or a reason with `[...]` in it is data,
    not markup (rich would drop `[key-account]` as an unknown style). Made once, on first use."""
    from rich.table import Table
    from rich.text import Text

    class Plain(Table):
        def add_row(self, *cells: Any, **options: Any) -> None:
            super().add_row(*(Text(printable(c)) if isinstance(c, str) else c for c in cells), **options)

    return Plain


def _table(*args: Any, **kwargs: Any) -> Table:
    return _plain_table()(*args, **kwargs)


def _e(text: object) -> str:
    """Text for a rich message: brackets in it (`priority: [retention, development]`) are shown, not
    read as markup, and control characters (ESC sequences in a CRM id or a server's answer) as escapes."""
    from rich.markup import escape

    return escape(printable(str(text)))


# emoji=False: rich turned `:x:` in data into an emoji (`root:x:0` printed as `root❌0`)
out: Console = _Lazy(soft_wrap=True, emoji=False)  # type: ignore[assignment]
err: Console = _Lazy(stderr=True, soft_wrap=True, emoji=False)  # type: ignore[assignment]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job: systemd, Kubernetes, `timeout`), raised where Ctrl-C would be."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM as Ctrl-C while a command commits and delivers. Killed outright, a run leaves the action
    it was delivering claimed, and a run in another container (a new pod) trusts that claim for 10 minutes;
    stopped this way, the attempt is recorded as interrupted and the next run delivers it at once. A
    SIGTERM the parent chose to ignore stays ignored."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C or SIGTERM while delivering: say that nothing is lost (typer would exit 130 without a word).
    The exit code is the shell's for the signal: 130 for SIGINT, 143 for SIGTERM."""
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    err.print(
        f"[yellow]{what}:[/] what was committed stays in the ledger; "
        "the next `retainer run` delivers what is still pending",
        highlight=False,
    )
    raise typer.Exit(143 if isinstance(exc, Terminated) else 130)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {_e(message)}", highlight=False)
    raise typer.Exit(code)


def _writable(path: Path, option: str, *, directory: bool) -> None:
    """Refuse an output path that cannot be written before any work is done (a backtest takes minutes):
    a file where a folder is wanted or the reverse, or a parent that is a file or read-only."""
    if path.exists():
        if directory and not path.is_dir():
            _fail(f"{option} {path}: is a file, not a folder")
        if not directory and path.is_dir():
            _fail(f"{option} {path}: is a folder, not a file")
    if not directory and not path.parent.is_dir():  # a file is written into its folder; only folders are made
        _fail(f"{option} {path}: the folder {path.parent} does not exist")
    parent = path if directory else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        _fail(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        _fail(f"{option} {path}: {parent} is not writable")


def _rules(path: Path) -> RuleSet:
    try:
        return load_rules(path)
    except RulesError as exc:
        _fail(str(exc))


def _engine(rules: Path, data: str) -> Engine:
    from .datafiles import open_source

    rs = _rules(rules)
    try:
        store = open_source(data, rs.tz)
    except (DataError, StoreError) as exc:
        _fail(str(exc))
    return Engine(rs, store)


def _plan(engine: Engine, as_of: str, clients: list[str] | None = None) -> Plan:
    # a --client the store does not have is a typo, as `explain` says (exit 2), found before planning; one
    # created after as_of is not (the plan says so)
    unknown = [c for c in dict.fromkeys(clients or ()) if engine.store.get("clients", c) is None]
    if unknown:
        _fail(f"no such client in the store: {', '.join(unknown)}")
    try:
        return engine.plan(as_of, clients=clients or None)
    except RetainerError as exc:
        _fail(str(exc))


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """retainer: declarative client-retention rules for CRMs."""


# ---------------------------------------------------------------- validate / schema


@app.command()
def validate(rules: Annotated[Path, typer.Argument(help="Rule file (YAML or JSON).")]) -> None:
    """Check a rule file; print its rules, or the first error with file:line and rule id (exit 2)."""
    rs = _rules(rules)
    parts: dict[str, list[Any]] = {}
    for r in rs.rules:
        parts.setdefault(r.id, []).append(r)
    err.print(f"[green]ok[/]: {_e(rules)} — {len(parts)} rule(s), time zone {rs.timezone}", highlight=False)
    for rid, ps in parts.items():
        r = ps[0]
        steps = f"  ({', '.join(p.part for p in ps if p.part)})" if len(ps) > 1 else ""
        out.print(f"  {rid:<24} {r.kind:<13} {r.category:<11}{steps}".rstrip(), highlight=False, markup=False)
    for d in rs.file.rules:
        if not d.enabled:
            out.print(f"  {d.id:<24} {d.kind:<13} {d.category:<11} (disabled)", highlight=False, markup=False)
    from .policies import idle_caps
    from .rules.notes import near_misses

    for note in [*idle_caps(rs), *near_misses(rs)]:
        err.print(f"[yellow]note:[/] {_e(note)}", highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of rule files (for editors and CI validation)."""
    print(json.dumps(json_schema(), indent=2, sort_keys=True))


# ---------------------------------------------------------------- plan / explain

FORMATS = ("table", "json", "jsonl")
RulesOpt = Annotated[Path, typer.Option("--rules", "-r", help="Rule file.")]
SourceOpt = Annotated[str, typer.Option("--data", "-d", help="Store URL, .db file, or folder of CSV/JSONL files.")]


def _format(fmt: str | None, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt is None:
        return "table" if sys.stdout.isatty() else "json"
    if fmt not in allowed:
        _fail(f"--format must be one of {', '.join(allowed)}, not {fmt!r}")
    return fmt


def _target(a: Any) -> str:
    for f in ("to_manager_id", "assignee_id"):
        v = getattr(a, f, None)
        if v:
            return str(v)
    return getattr(a, "channel", "") or ""


def print_plan_summary(plan: Plan, console: Console, *, limit: int = 20, duplicates: bool = True) -> None:
    """Per rule: actions, suppressions (duplicates left out when the caller counts them apart)."""
    supp_all = plan.suppressed if duplicates else [s for s in plan.suppressed if s.reason_code != "duplicate"]
    t = _table(title=f"Actions as of {plan.as_of.date().isoformat()}", show_lines=False)
    for col in ("rule", "actions", "suppressed", "by type"):
        t.add_column(col, justify="right" if col in ("actions", "suppressed") else "left")
    by_rule: dict[str, Counter[str]] = {}
    for a in plan.actions:
        by_rule.setdefault(a.rule, Counter())[a.type] += 1
    supp = Counter(s.action.rule for s in supp_all)
    for rid in sorted(set(by_rule) | set(supp)):
        types = ", ".join(f"{k} {v}" for k, v in sorted(by_rule.get(rid, Counter()).items()))
        t.add_row(rid, str(sum(by_rule.get(rid, Counter()).values())), str(supp.get(rid, 0)), types)
    console.print(t)
    if supp_all:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(s.reason_code for s in supp_all).items()))
        console.print(f"suppressed by reason — {reasons}", highlight=False)
    if limit and plan.actions:
        d = _table(title=f"First {min(limit, len(plan.actions))} of {len(plan.actions)} actions (by key)")
        for col in ("type", "client", "rule", "to", "reason"):
            d.add_column(col, overflow="fold")
        for a in plan.actions[:limit]:
            d.add_row(a.type, a.client_id, a.rule, _target(a), a.reason)
        console.print(d)


@app.command()
def plan(
    rules: RulesOpt,
    data: SourceOpt,
    as_of: Annotated[str, typer.Option("--as-of", help="Date (end of that day) or ISO 8601 instant.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", help="table | json | jsonl (default: table on a terminal, json when piped)"),
    ] = None,
    client: Annotated[list[str] | None, typer.Option("--client", "-c", help="Only these clients.")] = None,
    limit: Annotated[int, typer.Option(help="Rows of the action table (0: none).", min=0)] = 20,
) -> None:
    """Plan the actions due as of a date. Writes nothing."""
    f = _format(fmt)
    if _OWN_PROCESS:
        gc.disable()  # one plan, then the process ends: the collector would only walk what is still in use
    engine = _engine(rules, data)
    p = _plan(engine, as_of, client)
    if f == "json":
        _write_json(p)
    elif f == "jsonl":
        sys.stdout.writelines(p.jsonl_lines())
    else:
        print_plan_summary(p, out, limit=limit)
    _warn(p.warnings, "the plan's JSON lists them all")
    if _OWN_PROCESS:
        _exit_now()


def _warn(warnings: list[str], where: str, about: str = "") -> None:
    """Bad data the rules met, on stderr: the first ten, and where the rest are."""
    for w in warnings[:10]:
        err.print(f"[yellow]warning:[/] {_e(about + w)}", highlight=False, soft_wrap=True)
    if len(warnings) > 10:
        err.print(f"[yellow]warning:[/] {_e(about)}... and {len(warnings) - 10} more ({where})")


def _write_json(p: Plan) -> None:
    """The plan's JSON as it is made, a piece at a time (the whole of it is 222 MB for the full example
    rule set at 100k clients): straight to stdout's bytes when stdout is UTF-8 without newline
    translation, through the text layer otherwise, and for a piece UTF-8 cannot hold (a lone surrogate),
    so its encoding and error handling apply as to every other output."""
    out = sys.stdout
    buf: Any = getattr(out, "buffer", None)
    enc: str | None = getattr(out, "encoding", None)
    raw = buf is not None and enc is not None and codecs.lookup(enc).name == "utf-8" and os.linesep == "\n"
    out.flush()  # whatever the text layer holds goes first
    for piece in p.pieces():
        if not raw:
            out.write(piece if isinstance(piece, str) else piece.decode())
        elif isinstance(piece, bytes):
            buf.write(piece)
        else:
            try:
                buf.write(piece.encode())
            except UnicodeEncodeError:  # the text layer writes into the same buffer, after what is in it
                out.write(piece)
                out.flush()
    if raw:
        buf.write(b"\n")
        buf.flush()
    else:
        out.write("\n")


@app.command()
def explain(
    rules: RulesOpt,
    data: Annotated[str, typer.Option("--data", "-d", help="Store URL, .db file, or data folder.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Date or ISO 8601 instant.")],
    client: Annotated[str, typer.Option("--client", "-c", help="Client id.")],
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text | json")] = "text",
) -> None:
    """Show, per rule, each condition with the client's value and whether it held."""
    engine = _engine(rules, data)
    try:
        ex = engine.explain(client, as_of, rule=rule)
    except RetainerError as exc:
        _fail(str(exc))
    if ex.note and not ex.rules and "no such client" in ex.note:
        _fail(ex.note)
    if fmt == "json":
        print(json.dumps(ex.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, default=str))
    elif fmt == "text":
        print(printable(str(ex)))
    else:
        _fail(f"--format must be text or json, not {fmt!r}")


# ---------------------------------------------------------------- run / actions


def _ledger_store(data: str, tz: Any) -> Any:
    """Runs and the ledger need a store that keeps what they write: not a folder of files."""
    from .stores import open_store

    if Path(data).is_dir():
        _fail(
            f"--data {data} is a folder of files, which keeps no ledger: runs, and the actions they commit, are "
            "kept in a store. "
            f"Import it first: retainer import {data} --to sqlite:///crm.db"
        )
    if data.startswith("memory://"):
        _fail(f"--data {data}: runs need a store that keeps its ledger between runs: a .db file or sqlite:/// URL")
    try:
        return open_store(data, timezone=tz, create=False)
    except StoreError as exc:
        _fail(str(exc))


def _handlers(specs: list[str] | None, headers: list[str] | None, timeout: float) -> dict[str, Any] | None:
    from .adapters import handlers_from_specs

    hdrs: dict[str, str] = {}
    import os

    env = [h for h in os.environ.get("RETAINER_WEBHOOK_HEADERS", "").splitlines() if h.strip()]
    where = [f"RETAINER_WEBHOOK_HEADERS line {n}" for n in range(1, len(env) + 1)] + ["--header"] * len(headers or [])
    for h, src in zip([*env, *(headers or [])], where, strict=True):  # the variable keeps tokens out of `ps`
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            # a header is usually a secret: show its first word only, never the value the cron log would keep
            shown = (h.split()[0] if h.split() else "") + (" ..." if len(h.split()) > 1 else "")
            _fail(f"{src} {shown!r}: expected 'Name: value'")
        hdrs[name.strip()] = value.strip()
    if not specs:
        return None
    import warnings

    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            handlers = handlers_from_specs(specs, headers=hdrs, timeout=timeout)
    except RetainerError as exc:
        _fail(str(exc))
    for w in said:  # credentials over plain http: said once, as the run's other warnings are
        err.print(f"[yellow]warning:[/] {_e(w.message)}", highlight=False)
    return handlers


def _retry(max_attempts: int, retry_delay: float) -> Any:
    from .adapters import Retry

    try:
        return Retry(max_attempts=max_attempts, base_delay=retry_delay)
    except ValueError as exc:
        _fail(str(exc))


HandlerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--handler",
        "-H",
        help="Deliver through jsonl:PATH or webhook:URL; TYPE=SPEC routes one action type (repeatable).",
    ),
]
HeaderOpt = Annotated[list[str] | None, typer.Option("--header", help="Extra webhook header 'Name: value'.")]
AttemptsOpt = Annotated[int, typer.Option("--max-attempts", help="Delivery attempts before an action is dead.")]
DelayOpt = Annotated[float, typer.Option("--retry-delay", help="Seconds before the first retry; doubles each time.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Webhook timeout in seconds.")]


def _print_dispatch(d: Any, console: Console, data: str) -> None:
    if d is None:
        return
    console.print(f"delivered {len(d.done):,} ({d.attempts:,} attempts), dead {len(d.dead):,}", highlight=False)
    for type_, n in sorted(d.no_handler.items()):
        console.print(f"[yellow]pending[/] {n:,} {type_}: no handler for this type; they wait in the ledger")
    if d.in_flight:
        console.print(f"left {len(d.in_flight):,} action(s) to the dispatcher delivering them now "
                      "(a reactive session, another process)", highlight=False)  # fmt: skip
    for why, n in sorted(Counter(d.cancelled.values()).items()):
        since = f"{why} since" if why in ("do_not_contact", "no_marketing", "paid", "archived") else why
        console.print(f"cancelled {n:,} action(s) committed earlier and not sent: {since}", highlight=False)
    if d.held:
        console.print(f"[yellow]left {len(d.held):,} action(s) for the next run[/]: {_e(next(iter(d.held.values())))}",
                      highlight=False)  # fmt: skip
    if d.unsure:
        console.print(f"[yellow]{len(d.unsure):,} of the cancelled action(s) had been tried without a confirmed "
                      "answer[/]: the CRM may have carried them out "
                      f"(retainer actions list --data {_e(data)} --status done)", highlight=False)  # fmt: skip
    for handler, why in sorted(d.stopped.items()):
        console.print(
            f"[red]gave up on[/] {_e(handler)}: {_e(why)}; {d.left + len(d.failed):,} action(s) wait for the next run",
            highlight=False,
        )
    for i, (aid, error) in enumerate(sorted(d.dead.items())):
        if i == 10:
            console.print(f"... and {len(d.dead) - 10} more: retainer actions list --data {data} --status dead",
                          highlight=False)  # fmt: skip
            break
        console.print(f"[red]dead[/] {aid}: {_e(error)}", highlight=False)  # a server's answer: data, not markup


@app.command()
def run(
    rules: RulesOpt,
    data: Annotated[str, typer.Option("--data", "-d", help="Store URL or .db file (keeps the ledger).")],
    as_of: Annotated[str, typer.Option("--as-of", help="Date (end of that day) or ISO 8601 instant.")],
    handler: HandlerOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only plan: write and deliver nothing.")] = False,
    max_attempts: AttemptsOpt = 5,
    retry_delay: DelayOpt = 1.0,
    timeout: TimeoutOpt = 10.0,
    header: HeaderOpt = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="table | json (default: table on a terminal, json when piped)")
    ] = None,
) -> None:
    """Plan, commit what is new to the ledger (one transaction), then deliver it through handlers.

    Exit 0: all delivered. Exit 1: some actions went dead, or a handler was given up on (its actions wait for
    the next run). Exit 2: bad input, or another run holds the store.
    """
    fmt = _format(fmt, ("table", "json"))
    rs = _rules(rules)
    handlers = _handlers(handler, header, timeout)
    retry = _retry(max_attempts, retry_delay)
    store = _ledger_store(data, rs.tz)
    engine = Engine(rs, store)
    try:
        with _stop_on_sigterm():
            report = engine.run(as_of, handlers, dry_run=dry_run, retry=retry)
    except RetainerError as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:  # here, where typer has not yet turned it into a silent exit
        _interrupted(exc)
    finally:
        for h in (handlers or {}).values():
            if hasattr(h, "close"):
                h.close()
    if fmt == "json":
        sys.stdout.write(report.to_json() + "\n")
    else:
        c = report.counts()
        if dry_run:
            out.print("[bold]dry run[/]: nothing committed or delivered", highlight=False)
        else:
            assert report.run is not None
            out.print(f"run {report.run.id} as of {report.plan.as_of.isoformat()}", highlight=False)
        out.print(
            f"new {c['new']:,}, duplicate {c['duplicate']:,} "
            f"(already in the ledger), held back by policies {c['suppressed']:,}",
            highlight=False,
        )
        print_plan_summary(report.plan, out, limit=0 if not dry_run else 20, duplicates=False)
        _print_dispatch(report.dispatch, out, data)
    for w in report.plan.warnings[:10]:
        err.print(f"[yellow]warning:[/] {_e(w)}", highlight=False)
    if not report.ok:
        d = report.dispatch
        assert d is not None
        if fmt == "json":  # the table said it already; a cron log of JSON needs the one line that matters
            err.print(f"[red]error:[/] {len(d.dead):,} action(s) dead, {len(d.failed) + d.left:,} left for the next "
                      f"run; see `retainer actions list --data {_e(data)} --status dead`", highlight=False)  # fmt: skip
        raise typer.Exit(1)


actions_app = typer.Typer(help="Inspect the ledger, replay dead actions, record outcomes.", no_args_is_help=True,
                          cls=_OnceGroup)
app.add_typer(actions_app, name="actions")

DataOpt = Annotated[str, typer.Option("--data", "-d", help="Store URL or .db file.")]


@actions_app.command("list")
def actions_list(
    data: DataOpt,
    status: Annotated[list[str] | None, typer.Option("--status", "-s", help="pending|done|failed|dead")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule.")] = None,
    client: Annotated[list[str] | None, typer.Option("--client", "-c", help="Only these clients.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.", min=0)] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="table | json | jsonl")] = None,
) -> None:
    """Committed actions in commit order, with status, attempts and the last error."""
    from .errors import did_you_mean
    from .ledger import STATUSES

    for s_ in status or []:
        if s_ not in STATUSES:
            _fail(f"--status {s_!r}: expected one of {', '.join(STATUSES)}{did_you_mean(s_, STATUSES)}")
    f = _format(fmt)
    store = _ledger_store(data, "UTC")
    entries = store.ledger(status=status or None, rule=rule, client_ids=client or None, limit=limit)
    if not entries and (rule or client):  # a typo in a filter read as "retainer never did anything for it"
        _unknown_filters(store, rule, client or [])
    if f == "json":
        sys.stdout.write(json.dumps([e.to_dict() for e in entries], sort_keys=True, ensure_ascii=False) + "\n")
    elif f == "jsonl":
        sys.stdout.writelines(json.dumps(e.to_dict(), sort_keys=True, ensure_ascii=False) + "\n" for e in entries)
    else:
        from .adapters.dispatch import utc_now
        from .ledger import claim_alive

        now = utc_now()
        title = f"{len(entries)} action(s) in the ledger of {store.url}"
        rows: list[tuple[str, str, str, str, str, str, str]] = []
        for e in entries:
            status = f"cancelled ({e.cancelled})" if e.cancelled else e.status  # done, but never sent: say so
            if e.cancelled and e.attempts:  # a try whose answer never came: it may have gone out
                status += ", after a try without a confirmed answer: it may have gone out"
            if e.claimed_by and e.status in ("pending", "failed"):  # an attempt began and has not ended
                since = f"{e.updated_at:%Y-%m-%d %H:%M:%S}Z"
                if claim_alive(e, now):
                    status += f" (delivering since {since}: {e.claimed_by})"
                else:  # killed mid-delivery: nobody is delivering it, and the next run sends it again
                    status += f" (an attempt began {since} by {e.claimed_by}, which stopped; the next run delivers it)"
            rows.append((e.id, e.type, e.client_id or "", e.rule, status, str(e.attempts), e.last_error or ""))
        if out.width >= 150:
            t = _table(title=title)
            for col in ("id", "type", "client", "rule", "status", "tries", "last error"):
                t.add_column(col, overflow="fold", no_wrap=col == "id")  # ids are copied into replay/outcome
            for row in rows:
                t.add_row(*row)
            out.print(t)
            return
        # a narrower terminal: beside a whole id, seven columns left the error 4 characters a line
        out.print(_e(title), highlight=False)
        for id_, type_, client_id, rule_, status, tries, error in rows:
            out.print(f"{id_}  {_e(type_)}  {_e(client_id or '-')}  {_e(rule_)}  {_e(status)}  tries {tries}",
                      highlight=False)  # fmt: skip
            if error:
                out.print(f"    last error: {_e(error)}", highlight=False)


def _unknown_filters(store: Any, rule: str | None, clients: list[str]) -> None:
    """Say which of `actions list`'s filters names nothing retainer knows (on stderr: the output stays a list)."""
    from .errors import did_you_mean

    if rule is not None:
        rules = sorted({e.rule for e in store.ledger()})
        if rule not in rules:
            err.print(f"[yellow]warning:[/] no action of rule {_e(repr(rule))} in the ledger"
                      f"{_e(did_you_mean(rule, rules))}", highlight=False)  # fmt: skip
    for c in clients:
        if store.get("clients", c) is None:
            err.print(f"[yellow]warning:[/] no client {_e(repr(c))} in the store", highlight=False)


@actions_app.command("replay")
def actions_replay(
    data: DataOpt,
    ids: Annotated[list[str] | None, typer.Argument(help="Action ids to replay.")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Replay every dead action.")] = False,
    handler: HandlerOpt = None,
    max_attempts: AttemptsOpt = 5,
    retry_delay: DelayOpt = 1.0,
    timeout: TimeoutOpt = 10.0,
    header: HeaderOpt = None,
    rules: Annotated[
        Path | None,
        typer.Option("--rules", "-r", help="Rule file: a dunning step paid down below its rule's min_amount is "
                     "cancelled, as a run does (without it, only a step whose invoice is paid in full), and a "
                     "marketing action for a no_marketing client is cancelled or sent as its no_marketing policy "
                     "says (without it, left for the next run)."),
    ] = None,
) -> None:
    """Put dead (or failed) actions back to pending with fresh attempts; deliver them now with
    --handler, or leave them for the next run. Exit 1 if some die again."""
    from .adapters.dispatch import replay, utc_now
    from .ledger import claim_alive

    if not ids and not dead:
        _fail("give action ids or --dead")
    handlers = _handlers(handler, header, timeout)
    store = _ledger_store(data, "UTC")
    engine = Engine(_rules(rules), store) if rules is not None else None
    before = {e.id: e for e in store.ledger(ids=ids)} if ids else {}
    try:
        with _stop_on_sigterm():
            moved, report = replay(store, ids or (), dead=dead, handlers=handlers,
                                   retry=_retry(max_attempts, retry_delay),
                                   **(engine.voiding if engine else {}))  # fmt: skip
    except RetainerError as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    err.print(f"requeued {len(moved)} action(s)", highlight=False)
    requeued = set(moved)
    for i in dict.fromkeys(ids or ()):
        e = before.get(i)
        if e is None or i in requeued:
            continue
        if e.status == "pending" and report is not None and not claim_alive(e, utc_now()):
            what = ("delivered now" if e.id in report.done
                    else f"cancelled ({report.cancelled[e.id]})" if e.id in report.cancelled
                    else f"left for the next run ({report.held[e.id]})" if e.id in report.held
                    else f"dead: {report.dead[e.id]}" if e.id in report.dead
                    else f"failed: {report.failed[e.id]}" if e.id in report.failed
                    else "left for the next run")  # fmt: skip
            err.print(f"  {e.id} was waiting (pending): {_e(what)}", highlight=False)
            continue
        why = (f"cancelled ({e.cancelled}) before it went out: it must not be sent" if e.cancelled
               else "already delivered: replaying it would duplicate it" if e.status == "done"
               else "already waiting: the next run delivers it, or give --handler" if e.status == "pending"
               else "another dispatcher is delivering it now")  # fmt: skip
        err.print(f"  not requeued: {e.id} is {e.status} ({why})", highlight=False)
    left = [e for e in store.ledger(status=["pending"]) if not claim_alive(e, utc_now())
            and e.id not in report.held] if dead and report else []  # fmt: skip
    if left:
        err.print(f"{len(left):,} action(s) wait as pending (an interrupted run or replay left them, or a host that "
                  "pulls them has not yet): the next `retainer run` delivers them, or replay them by id with "
                  "--handler", highlight=False)  # fmt: skip
    if report is None:
        if moved:
            err.print("no --handler: the next `retainer run` delivers them", highlight=False)
    else:
        _print_dispatch(report, err, data)
        if not report.complete:
            raise typer.Exit(1)


@actions_app.command("outcome")
def actions_outcome(
    data: DataOpt,
    action_id: Annotated[str, typer.Argument(help="Action id.")],
    values: Annotated[list[str], typer.Argument(
        help="key=value pairs, e.g. result=completed, or churn_reason=price for a win-back task")],
) -> None:
    """Record what became of an action (the host's report); the action counts as done from then on."""
    outcome: dict[str, str] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            _fail(f"outcome {v!r}: expected key=value")
        outcome[k] = val
    store = _ledger_store(data, "UTC")
    from .adapters.dispatch import utc_now

    try:
        e = store.set_outcome(action_id, outcome, utc_now())
    except RetainerError as exc:
        _fail(str(exc))
    err.print(f"{e.id}: {e.status}, outcome {json.dumps(e.outcome, ensure_ascii=False)}", highlight=False)
    options = getattr(e.action, "options", None)
    if options:  # a task with answers to pick from (a win-back reason): say so when none of them was given
        from .rules.features import is_option

        if not any(is_option(v, options) for v in outcome.values()):
            err.print(f"[yellow]warning[/]: none of {', '.join(f'{k}={v}' for k, v in outcome.items())} is one of "
                      f"this task's options ({', '.join(options)}); a process waiting for the answer "
                      f"(win-back reads churn_reason=...) will not move on", highlight=False)


@app.command()
def runs(
    data: DataOpt,
    limit: Annotated[int, typer.Option(help="Newest N runs.", min=0)] = 20,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="table | json")] = None,
    events: Annotated[bool, typer.Option("--events", help="Also list what reactive sessions committed.")] = False,
) -> None:
    """Run records, newest first: as_of, rules digest, what each run committed and delivered."""
    store = _ledger_store(data, "UTC")
    records = store.runs(limit=limit, kind=None if events else "run")
    if not events and store.runs(limit=1, kind="event"):
        err.print("reactive sessions' records are left out: --events lists them too", highlight=False)
    if _format(fmt, ("table", "json")) == "json":
        sys.stdout.write(json.dumps([r.to_dict() for r in records], sort_keys=True) + "\n")
        return
    t = _table(title=f"Runs of {store.url}")
    counted = ("new", "duplicate", "done", "failed", "left", "dead")  # failed and left: the next run's work
    for col in ("run", "as of", "started", "status", *counted, *(["kind"] if events else [])):  # narrow: folded
        t.add_column(col, overflow="fold", no_wrap=col not in ("as of", "started"), min_width=len(col))
    for r in records:
        c = r.counts
        t.add_row(
            r.id[:8], r.as_of.isoformat(), r.started_at.isoformat(timespec="seconds"), r.status,
            *(str(c.get(k, "")) for k in counted), *([r.kind] if events else []),
        )  # fmt: skip
    out.print(t)


# ---------------------------------------------------------------- backtest


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(f"{option} must be a date like 2026-03-01, not {value!r}")


@app.command()
def backtest(
    rules: Annotated[Path, typer.Option("--rules", "-r", help="Rule file (A).")],
    data: SourceOpt,
    start: Annotated[str, typer.Option("--from", help="First date replayed.")],
    end: Annotated[str, typer.Option("--to", help="Last date replayed.")],
    step: Annotated[str, typer.Option("--step", help="Days, weeks or months: 1d (nightly runs), 1w, 2w, 1mo.")] = "1d",
    method: Annotated[
        str, typer.Option("--method", help="sweep (re-evaluate only what can change) or replan (full runs).")
    ] = "sweep",
    compare: Annotated[Path | None, typer.Option("--compare", help="Second rule file (B), for A/B.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write backtest.json, .csv and .html here.")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="table | json | csv (default: table on a terminal, else json)")
    ] = None,
) -> None:
    """Replay nightly runs over history with a fresh ledger: tasks, reassignments and notifications
    per rule and per manager, and what a second rule set would have done instead."""
    from .backtest import backtest as run_backtest
    from .backtest import csv_text, render_html, write_csv
    from .datafiles import open_source

    f = _format(fmt, ("table", "json", "csv"))
    d1, d2 = _date(start, "--from"), _date(end, "--to")
    if d2 < d1:
        _fail(f"--to {d2} is before --from {d1}")
    if out_dir is not None:
        _writable(out_dir, "--out", directory=True)
    sets = [(rules, _rules(rules))] + ([(compare, _rules(compare))] if compare else [])
    if compare and sets[0][1].timezone != sets[1][1].timezone:
        _fail(f"{rules} and {compare} use different time zones: compare rule sets of one time zone")
    try:
        store = open_source(data, sets[0][1].tz)
    except (DataError, StoreError) as exc:
        _fail(str(exc))
    from .backtest import step_notes

    # each result by its file's name; the same name twice by the paths, and the same file twice as A and B
    labels = [p.name for p, _ in sets]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p, _ in sets]
    if len(set(labels)) < len(labels):
        labels = [f"{lb} ({ab})" for lb, ab in zip(labels, "AB", strict=False)]
    results = []
    for (path, rs), label in zip(sets, labels, strict=True):
        for note in step_notes(rs, step):
            err.print(f"[yellow]note:[/] {_e(path.name)}: {_e(note)}", highlight=False)
        try:
            with err.status(f"backtesting {label} ...") as status:
                results.append(run_backtest(rs, store, d1, d2, step=step, label=label, method=method,
                                            progress=lambda i, n, s=status, lb=label: s.update(
                                                f"backtesting {lb}: step {i}/{n}")))  # fmt: skip
        except RetainerError as exc:
            _fail(str(exc))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "backtest.json").write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        write_csv(results, out_dir / "backtest.csv")
        (out_dir / "backtest.html").write_text(render_html(results), encoding="utf-8")
        err.print(f"wrote {out_dir}/backtest.html, backtest.json, backtest.csv", highlight=False)
    if f == "json":
        sys.stdout.write(json.dumps([r.to_dict() for r in results], sort_keys=True) + "\n")
    elif f == "csv":
        sys.stdout.write(csv_text(results))
    else:
        for r in results:
            _print_backtest(r, out)
    for r in results:  # a client skipped for a bad threshold attribute is missing from every count above
        _warn(sorted(r.warnings), "-f json lists them all", f"{r.label}: " if len(results) > 1 else "")


def _print_backtest(r: Any, console: Console, top: int = 15) -> None:
    console.rule(f"[bold]{r.label}[/]: {r.days[0]} → {r.days[-1]}, {len(r.days)} steps, {r.seconds:.1f}s")
    t = _table(title="Per rule (new actions; suppressions count every step they were held back)")
    t.add_column("rule")
    t.add_column("what")
    t.add_column("count", justify="right")
    for rule, kinds in r.per_rule().items():
        for k, n in kinds.items():
            t.add_row(rule, k, f"{n:,}")
    console.print(t)
    m = _table(title=f"Per manager (top {top} by tasks)")
    cols = ["tasks", "peak_tasks_per_step", "gained", "lost", "notifications", "client actions"]
    m.add_column("manager")
    for c in cols:  # as wide as a header's longest word: "notificatio…" on an 80-column terminal
        m.add_column(c.replace("_", " "), justify="right", min_width=max(map(len, c.replace("_", " ").split())))
    for mid, v in list(r.per_manager().items())[:top]:
        m.add_row(mid, *(f"{v.get(c, 0):,}" for c in cols))
    console.print(m)


# ---------------------------------------------------------------- report


@app.command()
def report(
    rules: RulesOpt,
    data: SourceOpt,
    as_of: Annotated[str, typer.Option("--as-of", help="Date of the digest.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="report.html or .md (default: Markdown)")] = None,
    top: Annotated[int, typer.Option(help="Rows per list.", min=1)] = 30,
) -> None:
    """The supervisor's digest: forgotten clients per manager, releases, escalations, debtors with
    amounts, churn reasons and stuck deliveries, as Markdown or a self-contained HTML page."""
    from .report import digest

    if out_file is not None and out_file.suffix.lower() not in (".html", ".htm", ".md"):
        _fail(f"--out {out_file}: give a .html or .md file")
    if out_file is not None:
        _writable(out_file, "--out", directory=False)
    engine = _engine(rules, data)
    try:
        d = digest(engine, as_of, top=top, label=rules.name)
    except RetainerError as exc:
        _fail(str(exc))
    if out_file is None:
        sys.stdout.write(d.to_markdown() + "\n")
        return
    text = d.to_markdown() + "\n" if out_file.suffix.lower() == ".md" else d.to_html()
    try:
        out_file.write_text(text, encoding="utf-8")
    except OSError as exc:  # checked up front; what is left is the disk's or the OS's say
        _fail(f"--out {out_file}: {exc.strerror or exc}")
    err.print(f"wrote {out_file}", highlight=False)


# ---------------------------------------------------------------- test


@app.command("test")
def test_(
    paths: Annotated[list[Path], typer.Argument(help="Scenario files (*.scenario.yaml, .yml) or folders of them.")],
) -> None:
    """Run scenario tests: facts, then steps that run the rules and check the actions (docs: testing).

    Exit 0: all passed. Exit 1: a scenario failed. Exit 2: a scenario file is invalid or none was found.
    """
    from .testing.scenario import ScenarioError, ScenarioFailure, run_scenario_file, scenario_files

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += scenario_files(p)
        elif p.exists():
            files.append(p)
        else:
            _fail(f"not found: {p}")
    if not files:
        _fail(f"no *.scenario.yaml or *.scenario.yml files under {', '.join(map(str, paths))}")
    failed = broken = 0
    for f in files:
        try:
            sc = run_scenario_file(f)
        except ScenarioFailure as exc:
            failed += 1
            out.print(f"[red]✗[/] {_e(f)}", highlight=False)
            out.print(printable(str(exc)), highlight=False, markup=False)
        except (ScenarioError, RetainerError) as exc:
            broken += 1
            err.print(f"[bold red]error:[/] {_e(exc)}", highlight=False)
        else:
            out.print(f"[green]✓[/] {_e(f)} — {_e(sc.name)} ({len(sc.steps)} step{'s' * (len(sc.steps) != 1)})",
                      highlight=False)  # fmt: skip
            for w in sc.warnings:  # passed, but a client may have been skipped over its data
                out.print(f"  [yellow]warning[/]: {_e(w)}", highlight=False)
    passed = len(files) - failed - broken
    summary = f"{passed} passed, {failed} failed" + (f", {broken} invalid" if broken else "")
    out.print(summary, highlight=False)  # after the ✓/✗ lines, on the same stream, so a pipe keeps the order
    if broken:
        raise typer.Exit(2)
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- import


@app.command("import")
def import_(
    src: Annotated[Path, typer.Argument(help="Folder of clients.csv, managers.csv, ... (or .jsonl).")],
    to: Annotated[str, typer.Option("--to", help="Store URL, e.g. sqlite:///crm.db")],
    timezone: Annotated[
        str | None, typer.Option(help="Zone for naive timestamps (default: UTC, or the --rules file's).")
    ] = None,
    rules: Annotated[Path | None, typer.Option("--rules", "-r", help="Take the time zone from this rule file.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace rows whose id already exists.")] = False,
    archive_missing: Annotated[bool, typer.Option(
        "--archive-missing", help="With --replace: archive stored clients the export no longer lists.")] = False,
) -> None:
    """Validate a data folder and load it into a store, all or nothing."""
    from .datafiles import import_data
    from .stores import open_store
    from .timeutil import get_tz, zone_name

    tzname = timezone or (_rules(rules).timezone if rules else None)
    try:  # neither given: the zone the store recorded at its first import, else UTC
        tz = get_tz(tzname) if tzname else None
    except ValueError as exc:
        _fail(str(exc))
    if src.is_file():
        _fail(f"{src} is a file: import reads a folder of data files, e.g. {src.parent}")
    if not src.is_dir():
        _fail(f"data folder not found: {src}")
    if archive_missing and not replace:
        _fail("--archive-missing needs --replace: it is for a full export loaded over the store")
    t0 = time.perf_counter()
    try:
        store = open_store(to, timezone=tz) if tz is not None else open_store(to)
    except StoreError as exc:
        _fail(str(exc))
    try:
        with err.status(f"importing {src} into {redact(to)} ..."):
            counts = import_data(src, store, replace=replace, archive_missing=archive_missing)
    except (DataError, StoreError) as exc:
        store.close()
        _remove_if_created(store)
        _fail(str(exc))
    except BaseException:  # a bug or Ctrl-C: still no empty database that tonight's plan would read
        store.close()
        _remove_if_created(store)
        raise
    store.close()
    archived = counts.pop("archived", None)
    total = sum(counts.values())
    err.print(
        f"[green]imported[/] {total:,} rows in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
        highlight=False,
    )
    if archived is not None:
        err.print(f"archived {archived:,} client(s) the export no longer lists", highlight=False)
    if tz is None and zone_name(store.tz) == "UTC":  # a 23:30 call in Kyiv read as UTC lands on the next day there
        err.print("note: times without an offset were read as UTC; if the CRM writes local time, import again "
                  "with --rules (the rules' zone) or --timezone", highlight=False)
    elif tz is None:
        err.print(f"times without an offset were read in {zone_name(store.tz)}, the zone of this store's first "
                  f"import", highlight=False)


def _remove_if_created(store: object) -> None:
    """A rejected import leaves nothing behind: not even the empty database file it created."""
    from .stores.sqlite import SQLiteStore, store_files

    if isinstance(store, SQLiteStore) and store.created:
        for f in store_files(store.path):
            f.unlink(missing_ok=True)


# ---------------------------------------------------------------- demo


def _examples_dir() -> Path:
    here = Path(__file__).resolve()
    for cand in (here.parent / "_examples", here.parents[2] / "examples"):
        if (cand / "rules" / "retention.yaml").exists():
            return cand
    raise RetainerError("the example rule files are not installed")


@app.command()
def demo(
    dir: Annotated[Path, typer.Option("--dir", help="Where to write the demo CRM and rules.")] = Path("retainer-demo"),
    clients: Annotated[int, typer.Option("--clients", min=10, max=2_000_000, help="Number of clients.")] = 3000,
    as_of: Annotated[str, typer.Option("--as-of", help="Plan date.")] = "2026-03-01",
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic CRM.")] = 7,
) -> None:
    """Generate a realistic synthetic CRM in SQLite, plan as of the demo date, and show the result."""
    import shutil

    from .datafiles import import_data
    from .stores import open_store
    from .synth import generate

    try:
        asof_date = date.fromisoformat(as_of)
    except ValueError:
        _fail(f"--as-of must be a date like 2026-03-01, not {as_of!r}")
    _writable(dir, "--dir", directory=True)
    shipped = _examples_dir() / "rules" / "retention.yaml"
    rules_path = dir / "rules.yaml"
    ours = not rules_path.exists() or rules_path.read_bytes() == shipped.read_bytes()  # an earlier demo's
    taken = [n for n in ("rules.yaml", "crm.db", "data") if (dir / n).exists()]
    if taken and not (ours and rules_path.exists()):  # someone's files, or a demo whose rules were edited
        why = "a rules.yaml that is not the demo's" if not ours else ", ".join(taken)
        _fail(f"--dir {dir} already holds {why}; the demo would overwrite {', '.join(taken)}: choose another --dir")
    t0 = time.perf_counter()
    dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped, rules_path)
    rs = _rules(rules_path)
    db = dir / "crm.db"
    from .stores.sqlite import store_files

    for f in store_files(db):
        f.unlink(missing_ok=True)
    with err.status("generating a synthetic CRM ..."):
        counts = generate(dir / "data", clients=clients, seed=seed, as_of=asof_date)
    with err.status("importing it into SQLite ..."):
        store = open_store(f"sqlite:///{db}", timezone=rs.tz)
        import_data(dir / "data", store)
    t1 = time.perf_counter()
    engine = Engine(rs, store)
    p = engine.plan(as_of)
    t_plan = time.perf_counter() - t1
    out.rule("[bold]retainer demo")
    out.print(
        f"CRM: {counts['clients']:,} clients, {counts['managers']} managers, {counts['touches']:,} touches, "
        f"{counts['tasks']:,} tasks, {counts['invoices']:,} invoices  →  {db}",
        highlight=False,
    )
    out.print(
        f"Rules: {rules_path} ({', '.join(r.id for r in rs.rules)}); planned as of {as_of} in {t_plan:.2f}s",
        highlight=False,
    )
    print_plan_summary(p, out, limit=8)
    _per_manager(p, store, out)
    for rid in ("release", "forgotten"):
        a = next((x for x in p.actions if x.rule == rid), None)
        if a is not None:
            out.rule(f"why {a.client_id}? (retainer explain --client {a.client_id} --rule {rid})")
            out.print(str(engine.explain(a.client_id, as_of, rule=rid)), highlight=False, markup=False)
    out.rule()
    out.print(
        "Next: "
        f"retainer plan --rules {rules_path} --data {db} --as-of {as_of} --format json | head\n"
        f"      retainer explain --rules {rules_path} --data {db} --as-of {as_of} --client <id>",
        highlight=False,
    )
    err.print(f"done in {time.perf_counter() - t0:.1f}s", highlight=False)
    store.close()


def _per_manager(plan: Plan, store: Any, console: Console, top: int = 10) -> None:
    tasks: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    gained: Counter[str] = Counter()
    for a in plan.actions:
        if a.type == "create_task" and a.assignee_id:  # type: ignore[attr-defined]
            tasks[a.assignee_id] += 1  # type: ignore[attr-defined]
        elif a.type == "reassign":
            lost[a.from_manager_id] += 1  # type: ignore[attr-defined]
            gained[a.to_manager_id] += 1  # type: ignore[attr-defined]
    names = {m.id: m.name or m.id for m in store.managers()}
    t = _table(title=f"Per manager (top {top} by new tasks)")
    for col in ("manager", "name", "new tasks", "clients released", "clients received"):
        t.add_column(col, justify="left" if col in ("manager", "name") else "right")
    ranked = sorted(set(tasks) | set(lost) | set(gained), key=lambda m: (-tasks[m], -lost[m], m))
    for m in ranked[:top]:
        t.add_row(m, names.get(m, "?"), str(tasks[m]), str(lost[m]), str(gained[m]))
    console.print(t)


#: True when `main` runs as the console script and owns the process (not when a test or a host calls `app`)
_OWN_PROCESS = False


def _exit_now() -> NoReturn:
    """End the process without tearing down what a big plan left in memory: it is 10-20 % of a
    `retainer plan` at 100k clients, and nothing is left to write (mypy ends the same way)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    """Console-script entry point: map every retainer error to a message and exit code 2."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    try:
        app()
    except RetainerError as exc:
        err.print(f"[bold red]error:[/] {_e(exc)}", highlight=False)
        sys.exit(2)
    except sqlite3.DatabaseError as exc:  # damage found while reading (a bad sector, a torn copy): no traceback,
        # and not exit 1, which says "actions went dead"; a store that cannot even be opened says so at open
        err.print(f"[bold red]error:[/] the store cannot be read: {_e(exc)}. Restore it from a backup (or try "
                  "`sqlite3 FILE .recover`)", highlight=False)  # fmt: skip
        sys.exit(2)


if __name__ == "__main__":
    main()
