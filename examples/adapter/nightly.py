"""The nightly job for the example CRM: plan, commit to the ledger, deliver, report.

    CRM_TOKEN=... python examples/adapter/nightly.py --rules rules.yaml --data crm.db \\
        --crm-url https://crm.example/api

Prints the run's counts as JSON on stdout. Exit codes: 0 everything delivered, 1 something was not
(actions that went dead, listed on stderr: fix the cause, then `Engine.replay(dead=True, ...)`; or the
CRM stopped answering, so the rest wait for the next run), 2 bad input or another run in progress.
Re-running is always safe: the ledger suppresses what an earlier run committed, and an action an
interrupted run left undelivered is delivered by the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import date

from crm_adapter import ExampleCRMHandler

import retainer
from retainer.adapters import Retry


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Plan retention actions and deliver them to the example CRM.")
    p.add_argument("--rules", required=True, help="rule file (YAML or JSON)")
    p.add_argument("--data", required=True, help="the SQLite store (a .db file; never created here)")
    p.add_argument("--as-of", default=date.today().isoformat(), help="plan as of the end of this day (default: today)")
    p.add_argument("--crm-url", required=True, help="base URL of the CRM's API")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    p.add_argument("--max-attempts", type=int, default=5, help="deliveries before an action is dead (default: 5)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rules = retainer.load_rules(args.rules)
        # create=False: a mistyped path must fail, not plan an empty new CRM and report success.
        store = retainer.open_store(f"sqlite:///{args.data}", timezone=rules.timezone, create=False)
    except retainer.RetainerError as exc:
        print(f"nightly: {exc}", file=sys.stderr)
        return 2
    # The token comes from the environment: a command line is visible to every user in `ps`.
    try:
        with ExampleCRMHandler(args.crm_url, token=os.environ.get("CRM_TOKEN"), timeout=args.timeout) as crm:
            retry = Retry(max_attempts=args.max_attempts)
            report = retainer.Engine(rules, store).run(args.as_of, handlers=crm, retry=retry)
    except (retainer.RetainerError, ValueError) as exc:  # a bad date or URL; a run already in progress
        print(f"nightly: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(json.dumps(report.counts(), sort_keys=True))
    if report.dispatch is not None:
        for action_id, error in sorted(report.dispatch.dead.items()):
            print(f"nightly: dead {action_id}: {error}", file=sys.stderr)
        for handler, why in sorted(report.dispatch.stopped.items()):
            print(f"nightly: gave up on {handler}: {why}; {report.dispatch.left} actions wait for the next run",
                  file=sys.stderr)  # fmt: skip
    return 0 if report.ok else 1  # cron mails the output of a failed job: an outage must not look like success


if __name__ == "__main__":
    sys.exit(main())
