"""WebhookHandler against a real HTTP server on 127.0.0.1, delivered through Engine.run and the Dispatcher.

Backoff runs on a fake clock (its `sleep` only moves time), so the only real wait is the timeout test's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from httpfake import FakeClock, FakeServer, Reply, closed_port_url

import retainer
from retainer.adapters import Dispatcher, Retry, WebhookHandler
from retainer.ledger import LedgerEntry, RunReport
from retainer.stores import Store

from .crmkit import AS_OF, engine, fill


@pytest.fixture
def hook(server: FakeServer) -> Iterator[WebhookHandler]:
    h = WebhookHandler(server.url + "/hooks/retainer", timeout=2.0)
    yield h
    h.close()


def run(store: Store, handler: WebhookHandler, clock: FakeClock, retry: Retry | None = None) -> RunReport:
    return engine(store).run(
        AS_OF, handlers={"*": handler}, retry=retry or Retry(max_attempts=5), clock=clock, sleep=clock.sleep
    )


def only_entry(store: Store) -> LedgerEntry:
    [entry] = store.ledger()
    return entry


def test_delivers_the_action_json_with_its_id_as_idempotency_key(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    report = run(crm, hook, clock)
    assert report.counts()["done"] == 1
    [action] = report.committed
    assert action.type == "create_task"
    [req] = server.requests
    assert (req.method, req.path) == ("POST", "/hooks/retainer")
    assert req.headers["idempotency-key"] == action.id
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("retainer/")
    entry = only_entry(crm)
    assert req.json() == json.loads(entry.payload) == entry.to_dict()["action"]
    assert req.json()["id"] == action.id and req.json()["due_at"] == action.due_at.isoformat()
    assert (entry.status, entry.attempts, entry.last_error) == ("done", 1, None)
    assert clock.sleeps == []


def test_extra_headers_are_sent_but_cannot_replace_the_idempotency_key(
    crm: Store, server: FakeServer, clock: FakeClock
) -> None:
    h = WebhookHandler(server.url, timeout=2.0, headers={"Authorization": "Bearer s3cret", "Idempotency-Key": "x"})
    try:
        run(crm, h, clock)
    finally:
        h.close()
    [req] = server.requests
    assert req.headers["authorization"] == "Bearer s3cret"
    assert req.headers["idempotency-key"] == only_entry(crm).id


@pytest.fixture(params=["memory", "sqlite"])
def any_crm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'crm.db'}"
    s = fill(retainer.open_store(url))
    yield s
    s.close()


def test_two_500s_then_200_is_done_on_the_third_attempt_with_exponential_backoff(
    any_crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    server.queue(500, 500, 200)
    report = run(any_crm, hook, clock)
    entry = only_entry(any_crm)
    assert (entry.status, entry.attempts, entry.last_error) == ("done", 3, None)
    assert clock.sleeps == [1.0, 2.0]
    assert report.counts()["done"] == 1 and report.dispatch is not None and report.dispatch.attempts == 3
    assert {r.headers["idempotency-key"] for r in server.requests} == {entry.id}
    assert len({r.body for r in server.requests}) == 1  # the very same body every time


def test_the_dispatcher_alone_retries_what_a_run_committed(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    report = engine(crm).run(AS_OF, clock=clock, sleep=clock.sleep)  # no handlers: committed, left pending
    assert only_entry(crm).status == "pending" and server.requests == []
    assert report.counts()["no_handler"] == 1
    server.queue(500, 500, 200)
    d = Dispatcher(crm, {"*": hook}, retry=Retry(max_attempts=5), clock=clock, sleep=clock.sleep)
    dispatched = d.dispatch_active()
    entry = only_entry(crm)
    assert dispatched.done == [entry.id] and dispatched.attempts == 3
    assert (entry.status, entry.attempts) == ("done", 3)
    assert clock.sleeps == [1.0, 2.0]


def test_always_500_goes_dead_after_max_attempts_naming_the_status(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    server.default = Reply(500, "database is down")
    report = run(crm, hook, clock, Retry(max_attempts=3))
    entry = only_entry(crm)
    assert (entry.status, entry.attempts) == ("dead", 3)
    assert entry.last_error is not None and "500" in entry.last_error and "database is down" in entry.last_error
    assert entry.last_error.startswith("ConnectionError: POST ")
    assert len(server.requests) == 3 and clock.sleeps == [1.0, 2.0]
    assert report.dispatch is not None and report.dispatch.dead == {entry.id: entry.last_error}
    assert not report.ok and report.counts()["dead"] == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_rejected_request_is_dead_at_once(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock, status: int
) -> None:
    server.default = Reply(status, '{"error": "assignee_id is not a user"}')
    run(crm, hook, clock)
    entry = only_entry(crm)
    assert (entry.status, entry.attempts) == ("dead", 1)
    assert entry.last_error is not None
    assert entry.last_error.startswith("PermanentError: ") and entry.last_error.endswith("(not retried)")
    assert str(status) in entry.last_error and "assignee_id is not a user" in entry.last_error
    assert len(server.requests) == 1 and clock.sleeps == []


@pytest.mark.parametrize("status", [408, 409, 425, 429, 502, 503])
def test_rate_limits_and_server_errors_are_retried(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock, status: int
) -> None:
    server.queue(status, 201)
    run(crm, hook, clock)
    entry = only_entry(crm)
    assert (entry.status, entry.attempts) == ("done", 1 if status == 429 else 2)  # a 429 is a "later", no attempt
    assert clock.sleeps == [1.0] and len(server.requests) == 2


@pytest.mark.parametrize(("reply", "paused"), [
    (Reply(429, headers=(("Retry-After", "7"),)), 7.0),  # the CRM's own wait, not the backoff's 1 s
    (Reply(503, headers=(("Retry-After", "3"),)), 3.0),
    (Reply(429), 1.0),  # no Retry-After: the backoff
    (Reply(429, headers=(("Retry-After", "3600"),)), 60.0),  # at most Retry.max_delay
    (Reply(429, headers=(("Retry-After", "soon"),)), 1.0),  # unreadable: the backoff
])  # fmt: skip
def test_a_crm_asking_to_slow_down_is_waited_for(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock, reply: Reply, paused: float
) -> None:
    """Found in an ops review: `Retry-After` was never read. A "later" spends no attempt: the CRM took nothing."""
    server.queue(reply, 201)
    run(crm, hook, clock)
    entry = only_entry(crm)
    assert (entry.status, entry.attempts) == ("done", 1)
    assert clock.sleeps == [paused] and len(server.requests) == 2


def test_retry_after_as_an_http_date() -> None:
    from email.utils import format_datetime

    from retainer.adapters.webhook import _retry_after

    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (_retry_after(soon) or 0) <= 30
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once
    assert _retry_after("") is None and _retry_after("-5") is None and _retry_after("²") is None


def _one_attempt(
    crm: Store, server: FakeServer, clock: FakeClock, reply: Reply, timeout: float
) -> tuple[float, LedgerEntry]:
    """One delivery to a server answering `reply`: the seconds it took, and the action's ledger entry."""
    server.default = reply
    h = WebhookHandler(server.url, timeout=timeout)
    started = time.monotonic()
    try:
        run(crm, h, clock, Retry(max_attempts=1))
    finally:
        h.close()
    return time.monotonic() - started, only_entry(crm)


def test_a_slow_server_times_out(crm: Store, server: FakeServer, clock: FakeClock) -> None:
    took, entry = _one_attempt(crm, server, clock, Reply(200, delay=5.0), 0.2)  # cut short by the server's teardown
    assert took < 2.0
    assert (entry.status, entry.attempts) == ("dead", 1)
    assert entry.last_error is not None and entry.last_error.startswith("TimeoutError: ")
    assert "timed out after 0.2s" in entry.last_error


def test_the_timeout_bounds_the_whole_attempt_not_each_read(crm: Store, server: FakeServer, clock: FakeClock) -> None:
    """A server that sent a byte every 0.3 s held a `timeout=1` delivery (and the run's lock) for as long as it
    liked, and the delivery "succeeded", so the give-up guard never fired either."""
    took, entry = _one_attempt(crm, server, clock, Reply(200, "x" * 30, drip=0.3), 1.0)
    assert took < 2.5
    assert (entry.status, entry.attempts) == ("dead", 1)
    assert entry.last_error is not None and entry.last_error.startswith("TimeoutError: ")


def _peak_mib(fn: Callable[[], object]) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("status", [200, 500])
def test_a_compressed_answer_is_never_inflated_past_the_cap(
    crm: Store, server: FakeServer, clock: FakeClock, status: int
) -> None:
    """A 20 KB gzip body that inflates to 20 MB was inflated whole, even for a success nobody reads."""
    import gzip

    bomb = gzip.compress(b"no " + b"0" * (20 * 2**20), compresslevel=9)
    server.default = Reply(status, bomb, headers=(("Content-Encoding", "gzip"),))
    h = WebhookHandler(server.url, timeout=5.0)
    try:
        assert _peak_mib(lambda: run(crm, h, clock, Retry(max_attempts=1))) < 8
    finally:
        h.close()
    assert server.requests[0].headers["accept-encoding"] == "identity"
    entry = only_entry(crm)
    if status == 200:
        assert entry.status == "done"
    else:
        assert entry.last_error is not None and entry.last_error.endswith("500 Internal Server Error: no " + "0" * 197)


def test_a_huge_error_page_is_read_only_as_far_as_the_cap(crm: Store, server: FakeServer, clock: FakeClock) -> None:
    """A 500 with a 30 MB body was read whole to keep 200 characters of it."""
    server.default = Reply(500, b"down " * (6 * 2**20))
    h = WebhookHandler(server.url, timeout=5.0)
    try:
        assert _peak_mib(lambda: run(crm, h, clock, Retry(max_attempts=1))) < 8
    finally:
        h.close()
    entry = only_entry(crm)
    assert entry.last_error is not None and "answered 500 Internal Server Error: down down" in entry.last_error


def test_a_server_that_is_down_is_a_connection_error(crm: Store, clock: FakeClock) -> None:
    h = WebhookHandler(closed_port_url(), timeout=2.0)
    try:
        run(crm, h, clock, Retry(max_attempts=2))
    finally:
        h.close()
    entry = only_entry(crm)
    assert (entry.status, entry.attempts) == ("dead", 2)
    assert entry.last_error is not None and entry.last_error.startswith("ConnectionError: POST http://127.0.0.1:")
    assert clock.sleeps == [1.0]


def test_a_rerun_posts_nothing_again(crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock) -> None:
    run(crm, hook, clock)
    again = run(crm, hook, clock)
    assert again.committed == [] and again.counts()["duplicate"] == 1 and again.counts()["done"] == 0
    assert len(server.requests) == 1
    assert [r.status for r in crm.runs()] == ["finished", "finished"]


def test_a_rerun_leaves_a_dead_action_alone_and_replay_delivers_it_with_the_same_key(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    server.default = Reply(503)
    run(crm, hook, clock, Retry(max_attempts=2))
    dead = only_entry(crm)
    assert dead.status == "dead" and len(server.requests) == 2

    run(crm, hook, clock, Retry(max_attempts=2))  # dead waits for a person: no new attempt
    assert len(server.requests) == 2

    server.default = Reply(200)  # the CRM is back
    moved, report = engine(crm).replay(
        dead=True, handlers={"*": hook}, retry=Retry(max_attempts=2), clock=clock, sleep=clock.sleep
    )
    assert moved == [dead.id]
    assert report is not None and report.done == [dead.id] and not report.dead
    entry = only_entry(crm)
    assert (entry.status, entry.attempts, entry.last_error) == ("done", 1, None)
    assert [r.headers["idempotency-key"] for r in server.requests] == [dead.id] * 3
    assert server.requests[-1].body == server.requests[0].body


def test_replay_without_handlers_leaves_the_action_for_the_next_run(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    server.default = Reply(400)
    run(crm, hook, clock)
    moved, report = engine(crm).replay(dead=True, clock=clock)
    assert report is None and only_entry(crm).status == "pending" and moved == [only_entry(crm).id]
    server.default = Reply(200)
    nxt = run(crm, hook, clock)
    assert nxt.committed == [] and nxt.dispatch is not None and nxt.dispatch.done == moved
    assert only_entry(crm).status == "done" and len(server.requests) == 2


@pytest.mark.parametrize("url", ["127.0.0.1:8080/hook", "ftp://crm/hook", ""])
def test_a_url_without_http_scheme_is_refused(url: str) -> None:
    with pytest.raises(retainer.ArgumentError, match="http:// or https://"):
        WebhookHandler(url)


def test_a_redirect_is_dead_at_once_naming_it(
    crm: Store, server: FakeServer, hook: WebhookHandler, clock: FakeClock
) -> None:
    """A POST is never silently re-sent elsewhere: the operator fixes the URL (http -> https, a moved hook)."""
    server.default = Reply(302, "")
    run(crm, hook, clock)
    entry = only_entry(crm)
    assert (entry.status, entry.attempts) == ("dead", 1)
    assert entry.last_error is not None and "302" in entry.last_error and "redirected" in entry.last_error
    assert len(server.requests) == 1


def test_credentials_in_the_url_never_reach_messages_or_the_ledger() -> None:
    from retainer.adapters.webhook import redact

    assert redact("https://user:s3cret@crm.example/hook?token=abc") == "https://***@crm.example/hook?***"
    assert redact("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"
    hook = WebhookHandler("http://user:s3cret@127.0.0.1:1/hook?token=abc", timeout=0.5)
    assert "s3cret" not in repr(hook) and "abc" not in repr(hook)
    with pytest.raises(retainer.ArgumentError, match="positive"):
        WebhookHandler("http://127.0.0.1/hook", timeout=0)


@pytest.mark.parametrize("url", [
    "https://user:s3/cret@crm.example/hook",  # '/' in a base64 token: the URL was shown whole
    "https://user:s3#cret@crm.example/hook",
    "https://user:s3?cret@crm.example/hook",
    "https://user:1234/s3cret@crm.example/hook",  # was accepted as host `user`, port 1234
])
def test_a_password_with_a_slash_or_hash_is_masked_and_the_url_refused(url: str) -> None:
    from retainer.errors import redact

    assert redact(url) == "https://***@crm.example/hook"
    with pytest.raises(retainer.ArgumentError) as info:
        WebhookHandler(url)
    assert "s3" not in str(info.value) and "1234" not in str(info.value)
    assert "an @ after the host" in str(info.value)


@pytest.mark.parametrize("spec", [
    "webhook:https://user:s3cret@crm.example:99999/hook",
    "webhook:https://crm.example/hook?token=s3cret x",
    "ftp://user:s3cret@crm.example/",
    "webhook:https://user:s3/cret@crm.example/hook",
])
def test_a_bad_handler_spec_is_reported_without_its_credentials(spec: str) -> None:
    """The raw spec came first in the message: `--handler 'webhook:https://user:s3cret@...': ...` on stderr,
    which the documented cron line appends to a log file."""
    from retainer.adapters import handler_from_spec

    with pytest.raises(retainer.RetainerError) as info:
        handler_from_spec(spec)
    assert "s3" not in str(info.value) and "--handler '" in str(info.value)


def test_secrets_a_server_echoes_and_control_characters_are_not_kept_in_the_error(
    crm: Store, server: FakeServer, clock: FakeClock
) -> None:
    """A gateway that echoes the request's headers put `Authorization: Basic ...` (the URL's user:password)
    into the ledger, and a body with ESC sequences reached the terminal through `actions list`."""
    import base64

    basic = base64.b64encode(b"user:s3cr/et").decode()
    server.default = Reply(401, f"got Basic {basic}, s3cr/et, token=qu3rytok, Bearer hdr-s3cret \x1b]0;pwned\x07")
    h = WebhookHandler(server.url.replace("//", "//user:s3cr%2Fet@") + "/hook?token=qu3rytok", timeout=2.0,
                       headers={"X-Api-Key": "Bearer hdr-s3cret"})
    try:
        run(crm, h, clock, Retry(max_attempts=1))
    finally:
        h.close()
    assert server.requests[0].headers["authorization"] == f"Basic {basic}"
    error = only_entry(crm).last_error
    assert error is not None and error.endswith(
        "answered 401 Unauthorized: got Basic ***, ***, token=***, *** \\x1b]0;pwned\\x07 (not retried)")


@pytest.mark.parametrize(("headers", "message"), [
    ({"Authorization Bearer s3cret-token": "x"}, "header #1: its name is not a header name"),
    ({"Authorization": "Bearer s3cret-token\x01"}, "header 'Authorization': its value has a character"),
    ({"Authorization": "Bearer s3cret\u2019token"}, "header 'Authorization': its value has a character"),
])
def test_a_malformed_header_is_refused_at_once_without_its_value(headers: dict[str, str], message: str) -> None:
    """A name holding the token was a retryable ConnectionError, stored for every action with the token in it."""
    with pytest.raises(retainer.ArgumentError) as info:
        WebhookHandler("https://crm.example/hook", headers=headers)
    assert str(info.value).startswith(message) and "s3cret" not in str(info.value)


@pytest.mark.parametrize(("url", "headers", "warned"), [
    ("http://user:s3cret@crm.example/hook", {}, True),
    ("http://crm.example/hook?token=s3cret", {}, True),
    ("http://crm.example/hook", {"Authorization": "Bearer s3cret"}, True),
    ("http://crm.example/hook?page=1", {}, False),  # nothing secret sent
    ("https://user:s3cret@crm.example/hook", {"Authorization": "Bearer s3cret"}, False),
    ("http://user:s3cret@127.0.0.1:8080/hook", {}, False),  # stays on this machine
    ("http://user:s3cret@localhost/hook", {}, False),
    ("http://user:s3cret@[::1]/hook", {}, False),
])
def test_credentials_over_plain_http_to_another_host_are_warned_about(
    url: str, headers: dict[str, str], warned: bool
) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        WebhookHandler(url, headers=headers).close()
    messages = [str(w.message) for w in said]
    assert len(messages) == warned and all("go over plain http://" in m and "s3cret" not in m for m in messages)
