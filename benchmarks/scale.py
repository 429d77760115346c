"""Scaling curve: import and plan the reference CRM at 10k, 100k and 1M clients, on one machine.

    python benchmarks/scale.py                        # 10k, 100k, 1M; writes the scale section of docs/performance.md
    python benchmarks/scale.py --sizes 10000,100000   # in a hurry: without 1M
    python benchmarks/run.py                          # the whole page, this curve included

For each size: the seeded CRM from ../shared/bench/gen.py (cached as benchmarks/data/crm-N), imported with
`retainer import` into benchmarks/data/retainer-N.db (reused while it is current: same CSVs, same store
schema), then `Engine.plan` as of 2026-03-01 for benchmarks/rules.yaml (forgotten + release) and for
examples/rules/full.yaml (every kind and policy), each in a fresh process, with the peak RSS of that
process. A run whose projected peak (the previous size's, scaled by clients) exceeds --max-mb is skipped
with the reason written into the table, so a 1M run cannot take the machine down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import AS_OF, FULL_RULES, ROOT, RULES, SHARED, machine, sh, timed

MARK = re.compile(r"<!-- scale -->.*<!-- /scale -->", re.S)
RULE_SETS = {"forgotten + release": RULES, "full.yaml": FULL_RULES}
SIZES = (10_000, 100_000, 1_000_000)


def crm(clients: int, work: Path) -> Path:
    """The generated CSV folder; generated into a temporary name first, so an interrupted run is not reused."""
    data = work / f"crm-{clients}"
    if not (data / "invoices.csv").exists():
        tmp = work / f"crm-{clients}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"generating {clients:,} clients -> {data}", file=sys.stderr)
        sh([sys.executable, str(SHARED / "gen.py"), "--clients", str(clients), "--out", str(tmp)])
        shutil.rmtree(data, ignore_errors=True)
        tmp.rename(data)
    return data


def fingerprint(data: Path) -> str:
    """What makes an imported store current: its CSVs (name, size, mtime) and the store's schema and
    summary definitions (a store written by another retainer version is imported again)."""
    from retainer.stores import sqlite as s

    h = hashlib.sha256(f"{s.SCHEMA_VERSION}|{s._LATEST_DEF}|{sorted(s._INDEXES.items())}".encode())
    for p in sorted(data.glob("*.csv")):
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def imported(clients: int, data: Path, work: Path, *, reimport: bool) -> dict[str, Any]:
    """The store for `clients`, imported unless a current one is there; the import's seconds and peak RSS."""
    db, stamp = work / f"retainer-{clients}.db", work / f"import-{clients}.json"
    fp = fingerprint(data)
    if not reimport and db.exists() and stamp.exists():
        known = json.loads(stamp.read_text())
        if known.get("fingerprint") == fp:
            return known | {"db": str(db), "reused": True}
    tmp = work / f"retainer-{clients}.tmp.db"
    from retainer.stores.sqlite import store_files

    for f in store_files(tmp):
        f.unlink(missing_ok=True)
    print(f"retainer import {data} -> {db}", file=sys.stderr)
    cmd = [sys.executable, "-m", "retainer", "import", str(data), "--to", f"sqlite:///{tmp}", "--timezone", "UTC"]
    seconds, rss = timed(cmd, stdout=work / f"import-{clients}.log")
    os.replace(tmp, db)
    for f in store_files(tmp):
        f.unlink(missing_ok=True)
    result = {"seconds": seconds, "rss_mb": rss, "fingerprint": fp, "date": f"{datetime.now(UTC):%Y-%m-%d}"}
    stamp.write_text(json.dumps(result))  # benchmarks/run.py reads "seconds" from here too
    return result | {"db": str(db), "reused": False}


def plan_runs(db: str, rules: Path, repeat: int) -> dict[str, Any]:
    """Median seconds and the largest peak RSS of `repeat` plans, each in a fresh process (run.py's child)."""
    runs = [json.loads(sh([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--child", db,
                           "--rules", str(rules)]).stdout) for _ in range(repeat)]  # fmt: skip
    return {"plan_s": statistics.median(r["plan"] for r in runs), "rss_mb": max(r["rss_mb"] for r in runs),
            "actions": runs[0]["actions"], "runs": len(runs)}  # fmt: skip


def default_max_mb() -> float:
    """80 % of the memory available when the run starts (Linux), else 12 GB: a 1M-client plan of the full
    example set needs about 15 GB, which a 24 GB machine has and a laptop does not."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return 0.8 * avail / 1024
    except (OSError, StopIteration, ValueError):
        return 12_000.0


def measure(sizes: list[int], work: Path, *, repeat: int, max_mb: float, reimport: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in sizes:
        data = crm(n, work)
        imp = imported(n, data, work, reimport=reimport)
        row: dict[str, Any] = {"clients": n, "import_s": imp["seconds"], "import_rss_mb": imp.get("rss_mb"),
                               "import_reused": imp["reused"], "plans": {}}  # fmt: skip
        for name, rules in RULE_SETS.items():
            prev = next((r for r in reversed(rows) if r["plans"].get(name, {}).get("rss_mb")), None)
            if prev is not None:
                projected = prev["plans"][name]["rss_mb"] * n / prev["clients"]
                if projected > max_mb:
                    row["plans"][name] = {"skipped": f"projected peak {projected / 1024:.1f} GB "
                                          f"({prev['clients']:,} clients × {n // prev['clients']}) exceeds "
                                          f"--max-mb {max_mb / 1024:.0f} GB"}  # fmt: skip
                    print(f"{n:,} {name}: skipped, {row['plans'][name]['skipped']}", file=sys.stderr)
                    continue
            times = repeat if n < 1_000_000 else max(1, repeat // 3)
            print(f"{n:,} {name}: {times} plan(s)", file=sys.stderr)
            row["plans"][name] = plan_runs(imp["db"], rules, times)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


# ---------------------------------------------------------------- the page section

HEADER = (
    "| clients | import, s | import µs/client | forgotten + release, s | peak MB | µs/client | KB/client "
    "| full.yaml, s | peak MB | µs/client | KB/client |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
_SVG_STYLE = ("<style>.title{font:600 13px sans-serif}.axis,.legend{font:11px sans-serif;fill:#555}"
              ".grid{stroke:#e5e7eb}</style>")  # fmt: skip


def chart(rows: list[dict[str, Any]], key: str, title: str) -> str:
    """One line per series over the measured sizes (equally spaced: each step is ×10 clients)."""
    from retainer.charts import line_chart

    series: dict[str, list[float]] = {}
    if key == "s":
        series["import"] = [r["import_s"] for r in rows]
    for name in RULE_SETS:
        values = [r["plans"].get(name, {}).get("plan_s" if key == "s" else "rss_mb") for r in rows]
        if all(v is not None for v in values):
            series[f"plan {name}"] = values
        elif any(v is not None for v in values):  # skipped at the largest size: the line stops there
            series[f"plan {name} (to {rows[len([v for v in values if v is not None]) - 1]['clients']:,})"] = [
                v for v in values if v is not None
            ]
    svg = line_chart(series, [f"{r['clients']:,}" for r in rows], title=title, width=720, height=240)
    return svg.replace(">", ">" + _SVG_STYLE, 1)


def render(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    def plan_cells(r: dict[str, Any], name: str) -> str:
        p = r["plans"].get(name, {})
        if "skipped" in p:
            return f"skipped: {p['skipped']} | | | "
        us, kb = 1e6 * p["plan_s"] / r["clients"], 1024 * p["rss_mb"] / r["clients"]
        return f"{p['plan_s']:.2f} | {p['rss_mb']:,.0f} | {us:.0f} | {kb:.1f}"

    lines = []
    for r in rows:
        imp = f"{r['import_s']:.1f}"
        lines.append(f"| {r['clients']:,} | {imp} | {1e6 * r['import_s'] / r['clients']:.0f} | "
                     f"{plan_cells(r, 'forgotten + release')} | {plan_cells(r, 'full.yaml')} |")  # fmt: skip
    table = "\n".join(lines)
    reps = f"median of {a.repeat} runs below 1M clients, {max(1, a.repeat // 3)} at 1M"
    return f"""<!-- scale -->
## Scaling with the number of clients

Measured by `python benchmarks/scale.py` (also run by `python benchmarks/run.py`; `--sizes 10000,100000` leaves
out 1M), {datetime.now(UTC):%Y-%m-%d}, on {machine()}. The same generator as above at each size
(`gen.py --clients N`: 300 managers per 100,000 clients, 20 touches, 2 tasks and 5 invoices per client); import
with `retainer import` into an empty SQLite store, then `Engine.plan` as of {AS_OF}, each in a fresh process,
{reps}; the import of each size is timed once. Peak is the process's peak RSS (`ru_maxrss`); per
client is seconds ÷ clients and peak ÷ clients. The machine is shared (2 cores, other jobs running), so
single figures move by ±20 % or more.

{HEADER}
{table}

{chart(rows, "s", "seconds by clients (import; Engine.plan per rule set)")}

{chart(rows, "mb", "peak RSS, MB, of Engine.plan by clients")}
<!-- /scale -->"""


def write_section(section: str, doc: Path) -> None:
    """Replace the scale section of the page, or add it before the backtest section (near the end)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Performance\n"
    if MARK.search(text):
        text = MARK.sub(lambda _m: section, text)
    elif "<!-- backtest -->" in text:
        text = text.replace("<!-- backtest -->", section + "\n\n<!-- backtest -->", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="clients, comma-separated (%(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="plans per rule set and size (a third of it at 1M)")
    ap.add_argument("--max-mb", type=float, default=default_max_mb(),
                    help="skip a plan whose projected peak RSS exceeds this (default: 80%% of the memory "
                         "available now, %(default).0f)")
    ap.add_argument("--reimport", action="store_true", help="import again even when the store is current")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "data")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--no-docs", action="store_true", help="print the results only")
    ap.add_argument("--from-json", action="store_true", help="measure nothing: write the page from the last run")
    a = ap.parse_args(argv)
    if not (SHARED / "gen.py").exists():
        sys.exit(f"the reference workload is not at {SHARED} (set RETAINER_BENCH_SHARED)")
    sizes = sorted(int(s.replace("_", "")) for s in a.sizes.split(",") if s.strip())
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.from_json:
        rows = json.loads((a.work / "scale.json").read_text())
    else:
        rows = measure(sizes, a.work, repeat=a.repeat, max_mb=a.max_mb, reimport=a.reimport)
        (a.work / "scale.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))
    if not a.no_docs:
        write_section(render(rows, a), a.report)
        print(f"updated {a.report} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
