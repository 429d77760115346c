"""benchmarks/scale.py: the memory guard, and the section it writes into docs/performance.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import bench_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    return bench_module("scale")


def _fake(scale: ModuleType, monkeypatch: pytest.MonkeyPatch, peaks: dict[tuple[int, str], float]) -> list[Any]:
    """measure() without generating, importing or planning anything: each plan reports a given peak."""
    planned: list[Any] = []
    monkeypatch.setattr(scale, "crm", lambda n, work: work / f"crm-{n}")
    monkeypatch.setattr(
        scale,
        "imported",
        lambda n, data, work, reimport: {"seconds": n / 1e4, "rss_mb": 100.0, "reused": True, "db": f"{n}.db"},
    )

    def plan_runs(db: str, rules: Path, repeat: int) -> dict[str, Any]:
        n = int(db.split(".")[0])
        name = next(k for k, v in scale.RULE_SETS.items() if v == rules)
        planned.append((n, name, repeat))
        return {"plan_s": n / 2e4, "rss_mb": peaks[(n, name)], "actions": 1, "runs": repeat}

    monkeypatch.setattr(scale, "plan_runs", plan_runs)
    return planned


def test_a_plan_projected_past_the_memory_limit_is_skipped_with_its_reason(
    scale: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peaks = {
        (10_000, "forgotten + release"): 90.0,
        (10_000, "full.yaml"): 240.0,
        (100_000, "forgotten + release"): 480.0,
        (100_000, "full.yaml"): 1950.0,
        (1_000_000, "forgotten + release"): 4000.0,
    }
    planned = _fake(scale, monkeypatch, peaks)
    rows = scale.measure([10_000, 100_000, 1_000_000], tmp_path, repeat=3, max_mb=12_000, reimport=False)
    assert (1_000_000, "full.yaml", 1) not in planned and (1_000_000, "forgotten + release", 1) in planned
    assert (100_000, "full.yaml", 3) in planned  # 240 MB × 10 is well under the limit
    reason = rows[2]["plans"]["full.yaml"]["skipped"]
    assert "projected peak 19.0 GB" in reason and "100,000 clients × 10" in reason


def test_the_section_is_replaced_in_place_or_put_before_the_backtest(
    scale: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peaks = {(n, r): n / 100 for n in (10_000, 100_000) for r in ("forgotten + release", "full.yaml")}
    _fake(scale, monkeypatch, peaks)
    rows = scale.measure([10_000, 100_000], tmp_path, repeat=1, max_mb=12_000, reimport=False)
    section = scale.render(rows, argparse.Namespace(repeat=1))
    assert section.startswith("<!-- scale -->") and section.endswith("<!-- /scale -->")
    assert "| 100,000 | 10.0 | 100 | 5.00 | 1,000 | 50 | 10.2 | 5.00 | 1,000 | 50 | 10.2 |" in section
    assert section.count("<svg") == 2 and "<polyline" in section
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\ntext\n\n<!-- backtest -->\nb\n<!-- /backtest -->\n")
    scale.write_section(section, doc)
    text = doc.read_text()
    assert text.index("<!-- scale -->") < text.index("<!-- backtest -->") and text.startswith("# Performance\n")
    scale.write_section("<!-- scale -->\nnew\n<!-- /scale -->", doc)
    text = doc.read_text()
    assert "new" in text and "<svg" not in text and text.count("<!-- scale -->") == 1 and "<!-- backtest -->" in text
