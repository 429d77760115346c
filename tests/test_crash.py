"""Crash and concurrency safety of `Engine.run` on SQLite, with real processes and real signals.

DESIGN §6: the ledger commit of a run is one transaction, so a `kill -9` anywhere leaves either the
whole run's actions or none; a second concurrent run fails fast with a clear error (CLI exit 2);
a killed run releases its lock, and the next run delivers what it committed but did not deliver.

Every child is `sys.executable` running a small script written into the test's directory. The
parent synchronises on READY/DONE lines and marker files with generous deadlines, not on guessed
sleeps; the only timed waits are the kill delays themselves, measured from READY.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest

import retainer
from retainer.adapters import JsonlHandler, Retry
from retainer.datafiles import import_data
from retainer.ledger import STATUSES
from retainer.synth import generate
from retainer.testing import RecordingHandler

RULES = Path(__file__).resolve().parents[1] / "examples" / "rules" / "retention.yaml"
DATA_AS_OF = date(2026, 3, 1)  # the synthetic CRM's snapshot date
BIG_AS_OF = "2026-06-01"  # three months on: ~4,000 actions from 1,500 clients (commit ~0.2 s)
SMALL_AS_OF = "2026-03-01"  # a few hundred actions: quick runs for the races
CLIENTS = 1500
MAX_ATTEMPTS = Retry().max_attempts
LOCK_MESSAGE = "another retainer run is in progress"
TIMEOUT = 60.0  # generous: a loaded CI machine must not turn a slow child into a failure

# One child for every scenario. It imports everything first, then reads one JSON job from stdin,
# so the parent can start the next child while it checks the previous one.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    import retainer
    from retainer.adapters import CallbackHandler, JsonlHandler

    job = json.loads(sys.stdin.readline())
    rules = retainer.load_rules(job["rules"])
    store = retainer.open_store("sqlite:///" + job["db"], timezone=rules.tz)
    engine = retainer.Engine(rules, store)
    jsonl = JsonlHandler(job["out"])
    handler = jsonl
    block_after = job.get("block_after")
    if block_after is not None:  # deliver `block_after` actions, then wait inside the handler
        delivered = []

        def deliver(action):
            if len(delivered) == block_after:
                Path(job["entered"]).write_text(action.id)
                while not Path(job["release"]).exists():
                    time.sleep(0.01)
            jsonl.handle(action)
            delivered.append(action.id)

        handler = CallbackHandler(deliver)
    print("READY", os.getpid(), flush=True)
    if job.get("barrier"):
        sys.stdin.readline()  # GO
    try:
        report = engine.run(job["as_of"], handlers=handler)
    except retainer.StoreError as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(2)
    jsonl.close()
    store.close()
    print("DONE", json.dumps(report.counts()), flush=True)
    """
)


# ---------------------------------------------------------------------------------------- helpers


class Child:
    """A child process running CHILD; stdout is read with deadlines, stderr goes to a file."""

    def __init__(self, script: Path, workdir: Path, name: str) -> None:
        self.err_path = workdir / f"{name}.stderr"
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=workdir,
        )
        self._buf = b""

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")
        self.proc.stdin.flush()

    def wait_line(self, prefix: str, timeout: float = TIMEOUT) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if line.decode().startswith(prefix):
                    return line.decode()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} line from the child in {timeout}s; stderr: {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(
                        f"child exited ({self.proc.wait()}) before {prefix!r}; stderr: {self.stderr()}"
                    )
                self._buf += chunk

    def output_within(self, seconds: float) -> bool:
        """Sleep `seconds`, or less if the child writes (DONE) or exits meanwhile."""
        assert self.proc.stdout is not None
        if seconds <= 0.05:  # a plain sleep is the most precise for the shortest delays
            time.sleep(seconds)
            return self.proc.poll() is not None
        ready, _, _ = select.select([self.proc.stdout.fileno()], [], [], seconds)
        return bool(ready)

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(TIMEOUT)

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self._err.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Every child a test starts; whatever happens, none outlives the test."""
    started: list[Child] = []
    yield started
    for c in started:
        c.close()


def wait_for(path: Path, *procs: Child, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for c in procs:
            if c.proc.poll() is not None:
                raise AssertionError(f"child exited ({c.proc.returncode}) before {path.name}: {c.stderr()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.005)


@dataclass
class Workload:
    template: Path  # a fresh, fully imported SQLite CRM: copy it, never open it
    rules: retainer.RuleSet
    plans: dict[str, list[str]] = field(default_factory=dict)  # as_of -> reference plan keys, sorted
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # as_of -> key -> action id
    script: Path = Path()

    def fresh(self, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template, dest)
        return dest

    def open(self, db: Path) -> Any:
        return retainer.open_store(f"sqlite:///{db}", timezone=self.rules.tz)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    base = tmp_path_factory.mktemp("crash")
    rules = retainer.load_rules(RULES)
    generate(base / "data", clients=CLIENTS, seed=11, as_of=DATA_AS_OF)
    template = base / "template.db"
    store = retainer.open_store(f"sqlite:///{template}", timezone=rules.tz)
    import_data(base / "data", store)
    store.close()
    assert not Path(f"{template}-wal").exists(), "the template must be one self-contained file to copy"
    w = Workload(template, rules)
    ref = w.open(w.fresh(base / "reference.db"))  # an identical fresh store: plan() is pure anyway
    for as_of in (BIG_AS_OF, SMALL_AS_OF):
        actions = retainer.Engine(rules, ref).plan(as_of).actions
        w.plans[as_of] = sorted(a.key for a in actions)
        w.ids[as_of] = {a.key: a.id for a in actions}
    ref.close()
    assert len(w.plans[BIG_AS_OF]) >= 2500, "the kill test needs a commit of thousands of actions"
    assert len(w.plans[SMALL_AS_OF]) >= 250
    w.script = base / "child.py"
    w.script.write_text(CHILD)
    return w


def start(w: Workload, workdir: Path, name: str, children: list[Child]) -> Child:
    c = Child(w.script, workdir, name)
    children.append(c)
    return c


def job(w: Workload, db: Path, out: Path, as_of: str, **extra: Any) -> dict[str, Any]:
    return {"rules": str(RULES), "db": str(db), "out": str(out), "as_of": as_of, **extra}


def jsonl_ids(path: Path) -> list[str]:
    """Ids in a JSONL output, in order; every line must be whole JSON (no torn line survives)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert not text or text.endswith("\n"), "the output ends with a torn line"
    return [json.loads(line)["id"] for line in text.splitlines()]


def check_ledger(w: Workload, db: Path, out: Path, as_of: str) -> dict[str, Any]:
    """The invariants that must hold after ANY crash; returns a summary of what is in the store."""
    want = w.plans[as_of]
    wal = Path(f"{db}-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0  # before opening: recovery may change it
    store = w.open(db)
    try:
        entries = store.ledger()
        runs = store.runs()
    finally:
        store.close()
    keys = [e.key for e in entries]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"keys committed twice: {dupes[:5]}"
    assert len({e.id for e in entries}) == len(entries)
    assert sorted(keys) in ([], want), f"a partial commit: {len(keys)} of {len(want)} planned actions in the ledger"
    run_ids = {r.id for r in runs}
    by_run = Counter(e.run_id for e in entries)
    assert set(by_run) <= run_ids, "actions of a run with no run record"
    for rid, n in by_run.items():  # each run that committed anything committed its whole plan
        assert n == len(want), f"run {rid} committed {n} of {len(want)} actions"
    if not entries:
        assert not runs, "a run record without its actions"
    for e in entries:
        assert e.status in STATUSES
        assert e.status in ("pending", "done"), f"{e.key}: {e.status} ({e.last_error})"
        assert 0 <= e.attempts <= MAX_ATTEMPTS, f"{e.key}: {e.attempts} attempts"
        if e.status == "done":
            assert e.attempts >= 1
        assert e.id == w.ids[as_of][e.key]
    written = jsonl_ids(out)
    assert len(written) == len(set(written)), "an action written to the output twice"
    by_id = {e.id: e for e in entries}
    assert set(written) <= set(by_id), "an action delivered that is not in the ledger"
    done = {e.id for e in entries if e.status == "done"}
    assert done <= set(written), "an action marked done that never reached the output"
    return {
        "committed": bool(entries),
        "done": len(done),
        "pending": len(entries) - len(done),
        "written": len(written),
        "wal": wal_bytes,
        "runs": len(runs),
    }


# ---------------------------------------------------------------------------------------- 1. kill -9


@dataclass
class Trial:
    delay: float
    phase: str
    summary: dict[str, Any]


def classify(summary: dict[str, Any], exited: bool) -> str:
    if exited:
        return "finished"
    if not summary["committed"]:
        # the plan writes nothing, so WAL frames with an empty ledger are an interrupted commit
        return "commit" if summary["wal"] else "planning"
    if summary["pending"]:
        return "dispatch"
    return "after-dispatch"


def test_sigkill_at_any_moment_leaves_all_of_the_run_or_nothing(workload: Workload, tmp_path: Path, children):
    w = workload
    want = w.plans[BIG_AS_OF]
    trials: list[Trial] = []
    committed: list[tuple[Path, Path, str]] = []  # stores a kill left with the whole run committed, and when
    n = 0
    current: tuple[Path, Path] | None = None
    summaries: dict[Path, dict[str, Any]] = {}
    t0 = time.monotonic()
    spares = [start(w, tmp_path, f"child{i}", children) for i in range(2)]  # imported before they are needed

    def trial(delay: float) -> Trial:
        nonlocal n, current
        if current is None:  # a store whose ledger is still empty is as good as a fresh one
            n += 1
            current = (w.fresh(tmp_path / f"s{n}" / "crm.db"), tmp_path / f"s{n}" / "out.jsonl")
        db, out = current
        child = spares.pop(0)
        child.send(job(w, db, out, BIG_AS_OF))
        child.wait_line("READY")
        if child.output_within(delay):  # DONE already: no idle wait for a run that is over
            rc = child.wait()
            assert rc == 0, child.stderr()
        else:
            rc = child.kill()
        exited = rc == 0
        spares.append(start(w, tmp_path, f"child{len(children)}", children))
        summary = check_ledger(w, db, out, BIG_AS_OF)
        t = Trial(delay, classify(summary, exited), summary)
        trials.append(t)
        summaries[db] = summary
        if summary["committed"]:
            committed.append((db, out, t.phase))
            current = None
        return t

    # a spread of delays after READY, doubling until a run gets to the end on its own
    for delay in (0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48):
        if trial(delay).phase in ("after-dispatch", "finished"):
            break
    else:
        pytest.fail(f"no run finished within 20 s of READY: {trials}")

    def boundary(before: set[str], after: set[str]) -> tuple[float, float]:
        lo = max((t.delay for t in trials if t.phase in before), default=0.0)
        hi = min((t.delay for t in trials if t.phase in after and t.delay >= lo), default=lo)
        return lo, hi

    # home in on the commit: kills between the last empty ledger and the first full one
    for _ in range(3):
        lo, hi = boundary({"planning", "commit"}, {"dispatch", "after-dispatch", "finished"})
        if hi - lo < 0.004:
            break
        trial((lo + hi) / 2)
    # make sure some kill lands mid-delivery (committed, partly delivered)
    for _ in range(4):
        if any(t.phase == "dispatch" and t.summary["done"] for t in trials):
            break
        lo, hi = boundary({"planning", "commit", "dispatch"}, {"after-dispatch", "finished"})
        trial((lo + hi) / 2)

    phases = Counter(t.phase for t in trials)
    print("\nkills after READY:", ", ".join(f"{t.delay * 1000:.0f}ms={t.phase}" for t in trials))
    assert phases["planning"] + phases["commit"] >= 1, trials
    assert any(t.phase == "dispatch" and t.summary["done"] for t in trials), trials

    t_kills = time.monotonic() - t0

    # complete one interrupted store per phase (and the last one, whose ledger is still empty):
    # exactly the plan, every action delivered, each once
    finals: dict[str, tuple[Path, Path]] = {}
    for db, out, phase in committed:
        if phase != "dispatch" or summaries[db]["done"]:  # mid-delivery: one that was partly delivered
            finals.setdefault(phase, (db, out))
    if current is not None:
        finals["uncommitted"] = current
    # in the mid-delivery store, a torn last line, as a kill in the middle of a write leaves it
    db, out = finals["dispatch"]
    store = w.open(db)
    pending = store.ledger(status=["pending"])
    store.close()
    with out.open("ab") as f:
        f.write(pending[-1].payload.encode()[:57])

    for i, (db, out) in enumerate(finals.values()):
        store = w.open(db)
        try:
            before = {e.key for e in store.ledger()}
            report = retainer.Engine(w.rules, store).run(BIG_AS_OF, handlers=JsonlHandler(out))
            assert report.counts()["new"] == (0 if before else len(want))
            assert report.ok
            entries = store.ledger()
            assert sorted(e.key for e in entries) == want
            assert {e.status for e in entries} == {"done"}
            assert all(1 <= e.attempts <= MAX_ATTEMPTS for e in entries)
            written = jsonl_ids(out)
            assert len(written) == len(set(written)) == len(want)
            assert set(written) == set(w.ids[BIG_AS_OF].values())
            if i in (0, len(finals) - 1):  # and a further run has nothing new to do
                again = retainer.Engine(w.rules, store).run(BIG_AS_OF, handlers=JsonlHandler(out))
                counts = again.counts()
                assert counts["new"] == 0 and counts["duplicate"] == len(want) and counts["done"] == 0, counts
                assert len(store.ledger()) == len(want)
                assert jsonl_ids(out) == written
        finally:
            store.close()
    t_done = time.monotonic() - t0 - t_kills
    print(f"{len(trials)} kills in {t_kills:.1f}s; completed {', '.join(finals)} stores in {t_done:.1f}s")


# ---------------------------------------------------------------------------------------- 2. races


def cli_run(db: Path, as_of: str, *handler: str) -> list[str]:
    cmd = [sys.executable, "-m", "retainer", "run", "--rules", str(RULES), "--data", str(db), "--as-of", as_of]
    return cmd + [x for h in handler for x in ("--handler", h)]


def last_run(w: Workload, db: Path) -> tuple[int, dict[str, int]]:
    store = w.open(db)
    try:
        runs = store.runs()
        return len(runs), dict(runs[0].counts) if runs else {}
    finally:
        store.close()


def ledger_keys(w: Workload, db: Path) -> list[str]:
    store = w.open(db)
    try:
        return [e.key for e in store.ledger()]
    finally:
        store.close()


def hold_lock(w: Workload, tmp_path: Path, children: list[Child], as_of: str, block_after: int) -> tuple[Child, Path]:
    """Child A mid-run: committed, `block_after` actions delivered, waiting inside its handler."""
    db = w.fresh(tmp_path / "crm.db")
    a = start(w, tmp_path, "holder", children)
    a.send(
        job(
            w,
            db,
            tmp_path / "out.jsonl",
            as_of,
            block_after=block_after,
            entered=str(tmp_path / "entered"),
            release=str(tmp_path / "release"),
        )
    )
    wait_for(tmp_path / "entered", a)
    return a, db


@pytest.mark.parametrize("via", ["api", "cli"])
def test_a_second_run_fails_fast_while_one_is_in_progress(workload: Workload, tmp_path: Path, children, via: str):
    w = workload
    want = w.plans[SMALL_AS_OF]
    a, db = hold_lock(w, tmp_path, children, SMALL_AS_OF, block_after=3)
    keys = ledger_keys(w, db)
    assert sorted(keys) == want  # A committed and is delivering
    runs_before = last_run(w, db)[0]

    t0 = time.monotonic()
    if via == "api":  # in a child first: were the lock ever to wait, this test fails instead of hanging
        b = start(w, tmp_path, "second", children)
        b.send(job(w, db, tmp_path / "b.jsonl", SMALL_AS_OF))
        b.wait_line("READY")
        t0 = time.monotonic()
        assert b.wait() == 2, b.stderr()
        assert LOCK_MESSAGE in b.stderr(), b.stderr()
        store = w.open(db)
        try:
            with pytest.raises(retainer.StoreError, match=LOCK_MESSAGE):
                retainer.Engine(w.rules, store).run(SMALL_AS_OF)
        finally:
            store.close()
    else:
        b = subprocess.run(cli_run(db, SMALL_AS_OF), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
        assert b.returncode == 2, (b.returncode, b.stdout, b.stderr)
        assert LOCK_MESSAGE in b.stderr, b.stderr
        assert "Traceback" not in b.stderr, b.stderr
    elapsed = time.monotonic() - t0
    assert a.proc.poll() is None, "A must still be mid-run: B did not wait for it"
    assert ledger_keys(w, db) == keys and last_run(w, db)[0] == runs_before, "the refused run wrote something"

    (tmp_path / "release").touch()
    a.wait_line("DONE")
    assert a.wait() == 0, a.stderr()

    if via == "api":
        store = w.open(db)
        try:
            report = retainer.Engine(w.rules, store).run(SMALL_AS_OF)
        finally:
            store.close()
        assert report.counts()["new"] == 0
    else:
        b = subprocess.run(cli_run(db, SMALL_AS_OF), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
        assert b.returncode == 0, (b.returncode, b.stdout, b.stderr)
    runs, counts = last_run(w, db)
    assert runs == runs_before + 1
    assert counts["new"] == 0 and counts["duplicate"] == len(want), counts
    assert ledger_keys(w, db) == keys
    assert len(jsonl_ids(tmp_path / "out.jsonl")) == len(want)  # A delivered everything, once
    print(f"\nrefused in {elapsed:.2f}s ({via})")


@pytest.mark.parametrize("via", ["api", "cli"])
def test_racing_runs_commit_the_plan_exactly_once(workload: Workload, tmp_path: Path, children, via: str):
    w = workload
    want = w.plans[SMALL_AS_OF]
    outcomes = []
    staggers = (0.0, 0.0, 0.05, 0.3) if via == "api" else (0.0, 0.0, 0.3)
    for i, stagger in enumerate(staggers):
        d = tmp_path / f"race{i}"
        db = w.fresh(d / "crm.db")
        if via == "api":  # both import first, then start on one GO: as simultaneous as it gets
            racers = [start(w, d, f"racer{j}", children) for j in range(2)]
            for c in racers:
                c.send(job(w, db, d / "out.jsonl", SMALL_AS_OF, barrier=True))
                c.wait_line("READY")
            for c in racers:
                c.send("GO")
                time.sleep(stagger)
            rcs = [c.wait() for c in racers]
            errs = [c.stderr() for c in racers]
        else:
            cmd = cli_run(db, SMALL_AS_OF, f"jsonl:{d / 'out.jsonl'}")
            procs = []
            for j in range(2):
                procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d))
                time.sleep(stagger if j == 0 else 0)
            try:
                results = [p.communicate(timeout=TIMEOUT) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            rcs = [p.returncode for p in procs]
            errs = [err for _out, err in results]
        for rc, err in zip(rcs, errs, strict=True):
            assert rc in (0, 2), (rc, err)
            assert "Traceback" not in err, err
            if rc == 2:
                assert LOCK_MESSAGE in err, err
        assert 0 in rcs, (rcs, errs)
        keys = ledger_keys(w, db)
        assert len(keys) == len(set(keys))
        assert sorted(keys) == want
        store = w.open(db)
        try:
            runs = store.runs()
            assert len(runs) == rcs.count(0)
            assert sum(r.counts["new"] for r in runs) == len(want)
        finally:
            store.close()
        written = jsonl_ids(d / "out.jsonl")
        assert sorted(written) == sorted(w.ids[SMALL_AS_OF].values()), "delivered twice or not at all"
        outcomes.append(tuple(rcs))
    print(f"\n{via} race exit codes: {outcomes}")


# ---------------------------------------------------------------------------------------- 3. dead holder


def test_a_killed_holder_releases_the_lock_and_its_actions_are_delivered(workload: Workload, tmp_path: Path, children):
    w = workload
    want = w.plans[SMALL_AS_OF]
    block_after = 230  # blocked delivering the 231st: 230 delivered and recorded, the rest pending
    a, db = hold_lock(w, tmp_path, children, SMALL_AS_OF, block_after=block_after)
    a.kill()
    out = tmp_path / "out.jsonl"

    store = w.open(db)
    try:
        after_kill = {e.id: e for e in store.ledger()}
        assert sorted(e.key for e in after_kill.values()) == want
        pending = {i for i, e in after_kill.items() if e.status == "pending"}
        done = {i for i, e in after_kill.items() if e.status == "done"}
        assert done and pending and len(done) + len(pending) == len(want)
        written = jsonl_ids(out)
        assert len(written) == block_after
        assert done <= set(written)  # each result is recorded right after its delivery

        t0 = time.monotonic()
        report = retainer.Engine(w.rules, store).run(SMALL_AS_OF, handlers=JsonlHandler(out))
        elapsed = time.monotonic() - t0
        counts = report.counts()
        assert counts["new"] == 0 and counts["duplicate"] == len(want), counts
        assert report.dispatch is not None and set(report.dispatch.done) == pending
        entries = store.ledger()
        assert {e.status for e in entries} == {"done"}
        assert all(e.attempts <= MAX_ATTEMPTS for e in entries)
        assert all(e.attempts == 1 for e in entries if e.id in done)
    finally:
        store.close()
    final = jsonl_ids(out)
    assert len(final) == len(set(final)) == len(want)
    assert set(final) == set(w.ids[SMALL_AS_OF].values())
    print(f"\nnext run after the kill took {elapsed:.2f}s")


POISON_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import retainer
    from retainer.adapters import CallbackHandler, Retry

    def handle(action):
        if action.client_id == "c005":  # delivering this one kills the process, every time
            os.kill(os.getpid(), signal.SIGKILL)

    store = retainer.open_store("sqlite:///" + sys.argv[1])
    rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}
    retainer.Engine(rules, store).run("2026-06-01", handlers=CallbackHandler(handle), retry=Retry(max_attempts=2))
    """
)


def test_an_action_that_kills_the_process_uses_up_only_its_own_attempts(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": f"c{i:03}", "manager_id": "m1"} for i in range(300)],
              touches=[{"id": f"t{i}", "client_id": f"c{i:03}", "at": "2026-01-01", "kind": "call"}
                       for i in range(300)])  # fmt: skip
    store.close()
    script = tmp_path / "poison.py"
    script.write_text(POISON_CHILD)
    for _ in range(2):  # two nights, two crashes on the same action
        assert subprocess.run([sys.executable, str(script), str(db)], timeout=TIMEOUT).returncode == -signal.SIGKILL
    store = retainer.open_store(f"sqlite:///{db}")
    rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}
    report = retainer.Engine(rules, store).run("2026-06-01", handlers=RecordingHandler(), retry=Retry(max_attempts=2))
    poison = store.ledger(client_ids=["c005"])[0]
    assert (poison.status, poison.attempts) == ("dead", 2)
    assert "never returned" in (poison.last_error or "")
    others = [e for e in store.ledger() if e.client_id != "c005"]
    assert len(others) == 299 and {e.status for e in others} == {"done"} and {e.attempts for e in others} == {1}
    assert report.dispatch is not None and list(report.dispatch.dead) == [poison.id]
