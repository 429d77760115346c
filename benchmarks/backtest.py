"""Backtest speed: a year of nightly steps, swept (the default) versus re-planned in full every step.

    python benchmarks/backtest.py                                   # demo CRM (3,000 clients), both rule sets
    python benchmarks/backtest.py --store benchmarks/data/retainer-100000.db --replan-steps 3

Prints one JSON line per (store, rule set, method) and updates the backtest section of
docs/performance.md. `--replan-steps N` times only N full runs and extrapolates to the year (a year
of full runs over 100k clients takes hours); the output says so. The store is copied to a temporary
file first: a benchmark never modifies the reference data.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- backtest -->.*<!-- /backtest -->", re.S)
RULES = {"forgotten+release": ROOT / "benchmarks" / "rules.yaml", "full": ROOT / "examples" / "rules" / "full.yaml"}


def measure(store_path: Path, rules_name: str, method: str, start: date, end: date) -> dict[str, Any]:
    import retainer
    from retainer.backtest import backtest

    rules = retainer.load_rules(RULES[rules_name])
    store = retainer.open_store(f"sqlite:///{store_path}", timezone=rules.tz, create=False)
    t0 = time.perf_counter()
    b = backtest(rules, store, start, end, step="1d", method=method)
    seconds = time.perf_counter() - t0
    store.close()
    per_step = round(1000 * seconds / len(b.days), 1)
    return {"store": store_path.name, "rules": rules_name, "method": method, "steps": len(b.days),
            "actions": len(b.new), "seconds": round(seconds, 1), "ms_per_step": per_step}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "benchmarks" / "data" / "demo-3000.db")
    ap.add_argument("--rules", choices=[*RULES, "all"], default="all")
    ap.add_argument("--methods", default="sweep,replan")
    ap.add_argument("--to", type=date.fromisoformat, default=date(2026, 3, 1), help="last step; a year of steps")
    ap.add_argument("--replan-steps", type=int, default=0, help="time only this many full runs, extrapolate")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/performance.md")
    a = ap.parse_args()
    if not a.store.exists():
        sys.exit(f"{a.store} does not exist: `retainer demo --dir benchmarks/data/demo-3000` or benchmarks/run.py")
    start = a.to - timedelta(days=364)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / a.store.name
        shutil.copyfile(a.store, copy)
        for name in RULES if a.rules == "all" else [a.rules]:
            for method in a.methods.split(","):
                if method == "replan" and a.replan_steps:
                    r = measure(copy, name, method, a.to - timedelta(days=a.replan_steps - 1), a.to)
                    r.update(
                        extrapolated_from_steps=r["steps"], steps=365, seconds=round(r["ms_per_step"] * 365 / 1000, 1)
                    )
                else:
                    r = measure(copy, name, method, start, a.to)
                print(json.dumps(r), flush=True)
                rows.append(r)
    if a.no_docs:
        return
    doc = ROOT / "docs" / "performance.md"
    lines = [f"- {r['store']}, {r['rules']}, `--method {r['method']}`: {r['seconds']} s for {r['steps']} daily steps "
             f"({r['ms_per_step']} ms per step"
             + (f", extrapolated from {r['extrapolated_from_steps']} steps" if "extrapolated_from_steps" in r else "")
             + f"), {r['actions']:,} actions" for r in rows]  # fmt: skip
    section = (
        "<!-- backtest -->\n"
        "**Backtest** (`python benchmarks/backtest.py`): a year of nightly steps, swept versus re-planned in full "
        "(2 shared cores, so expect noise):\n\n" + "\n".join(lines) + "\n<!-- /backtest -->"
    )
    text = doc.read_text(encoding="utf-8")
    text = MARK.sub(lambda _m: section, text) if MARK.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
    print(f"updated {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
