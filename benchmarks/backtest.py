"""Backtest speed: a year of nightly steps over the demo CRM (`retainer demo`'s 3,000 clients).

    python benchmarks/backtest.py            # prints JSON and updates the backtest section of docs/performance.md

Each step is a full run (plan + commit to a fresh in-memory ledger), so this measures 365 runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- backtest -->.*<!-- /backtest -->", re.S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=3000)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "data")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/performance.md")
    a = ap.parse_args()

    import retainer
    from retainer.backtest import backtest
    from retainer.datafiles import import_data
    from retainer.synth import generate

    rules = retainer.load_rules(ROOT / "examples" / "rules" / "retention.yaml")
    folder, db = a.work / f"demo-{a.clients}", a.work / f"demo-{a.clients}.db"
    if not db.exists():
        generate(folder, clients=a.clients, seed=7, as_of=date(2026, 3, 1))
        store = retainer.open_store(f"sqlite:///{db}", timezone=rules.tz)
        import_data(folder, store)
        store.close()
    store = retainer.open_store(f"sqlite:///{db}", timezone=rules.tz, create=False)
    t0 = time.perf_counter()
    b = backtest(rules, store, date(2025, 3, 2), date(2026, 3, 1), step="1d")
    seconds = time.perf_counter() - t0
    result = {"clients": a.clients, "steps": len(b.days), "actions": len(b.new), "seconds": round(seconds, 1),
              "ms_per_step": round(1000 * seconds / len(b.days), 1)}  # fmt: skip
    print(json.dumps(result))
    if a.no_docs:
        return
    doc = ROOT / "docs" / "performance.md"
    section = (
        "<!-- backtest -->\n"
        f"**Backtest** (`python benchmarks/backtest.py`): a year of nightly steps ({result['steps']} full runs) over "
        f"the {a.clients:,}-client demo CRM in SQLite took {result['seconds']} s ({result['ms_per_step']} ms per step) "
        f"and produced {result['actions']:,} actions.\n"
        "<!-- /backtest -->"
    )
    text = doc.read_text(encoding="utf-8")
    text = MARK.sub(section, text) if MARK.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
    print(f"updated {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
