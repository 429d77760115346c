"""Time the fetch phase of `Engine.plan` on a SQLite store, piece by piece (clients, managers, each
fact table's aggregates), in one fresh process. A developer's tool: it writes nothing.

    python benchmarks/fetch.py benchmarks/data/retainer-100000.db [--as-of 2026-03-01] [--repeat 3]

It only reads, but opening a store written by an older retainer upgrades it (schema 2 adds per-client
summaries), as any open does: point it at a copy of a store other checkouts share.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "benchmarks" / "rules.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db", type=Path)
    ap.add_argument("--as-of", default="2026-03-01")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rules", type=Path, default=RULES)
    a = ap.parse_args()

    t0 = time.perf_counter()
    import retainer
    from retainer.rules.features import FeatureFrame

    engine = retainer.Engine(retainer.load_rules(a.rules), retainer.open_store(f"sqlite:///{a.db}", timezone="UTC"))
    store = engine.store
    print(json.dumps({"open": round(time.perf_counter() - t0, 4)}))
    asof = engine.as_of(a.as_of)
    needed = engine.rules.features_needed()
    for _ in range(a.repeat):
        t = time.perf_counter()
        clients = store.clients(asof.instant)
        t_clients = time.perf_counter() - t
        t = time.perf_counter()
        managers = {m.id: m for m in store.managers()}
        t_managers = time.perf_counter() - t
        frame = FeatureFrame(engine.rules.registry, store, asof, clients, managers, None)
        specs = []
        for name in engine.rules.registry.closure(needed):
            for s in engine.rules.registry.get(name).aggs(asof):
                if s not in specs:
                    specs.append(s)
        by_entity: dict[str, list] = {}
        for s in specs:
            by_entity.setdefault(s.entity, []).append(s)
        row = {"clients": t_clients, "managers": t_managers}
        for entity, ss in by_entity.items():
            t = time.perf_counter()
            store.aggregate(ss, asof.instant)
            row[f"agg.{entity}({len(ss)})"] = time.perf_counter() - t
        t = time.perf_counter()
        frame.prefetch(needed)
        row["prefetch"] = time.perf_counter() - t
        t = time.perf_counter()
        store.manager_loads(asof.instant)
        row["manager_loads"] = time.perf_counter() - t
        row["fetch"] = t_clients + t_managers + row["prefetch"]
        print(json.dumps({k: round(v, 4) for k, v in row.items()}))


if __name__ == "__main__":
    main()
