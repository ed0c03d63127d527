"""The bench harness's order of runs and its statistics (no timing is asserted: the sides are fakes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import (
    Discard,
    Goal,
    GoalKind,
    PairSpec,
    RatioKind,
    Slot,
    median,
    pairwise_ratios,
    run_pair,
    schedule,
)


def test_schedule_is_warmup_then_a_b_a_b() -> None:
    slots = schedule(pairs=3, warmup=1)
    assert [(s.index, s.side, s.warmup) for s in slots] == [
        (0, "A", True),
        (0, "B", True),
        (1, "A", False),
        (1, "B", False),
        (2, "A", False),
        (2, "B", False),
        (3, "A", False),
        (3, "B", False),
    ]
    assert schedule(pairs=1, warmup=0) == [Slot(0, "A", False), Slot(0, "B", False)]
    with pytest.raises(ValueError):
        schedule(pairs=0, warmup=1)


def test_median_odd_and_even() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_pairwise_ratios_time_and_throughput() -> None:
    a, b = [2.0, 3.0, 8.0], [1.0, 6.0, 4.0]
    assert pairwise_ratios(a, b, RatioKind.TIME) == [2.0, 0.5, 2.0]
    # the same work in A and B seconds: throughput A / throughput B = B / A
    assert pairwise_ratios(a, b, RatioKind.THROUGHPUT) == [0.5, 2.0, 0.5]
    with pytest.raises(ValueError):
        pairwise_ratios([1.0], [1.0, 2.0], RatioKind.TIME)
    with pytest.raises(ValueError):
        pairwise_ratios([0.0], [1.0], RatioKind.TIME)


def test_median_of_pairwise_ratios_is_not_ratio_of_medians() -> None:
    a, b = [1.0, 10.0, 10.0], [2.0, 5.0, 40.0]
    ratios = pairwise_ratios(a, b, RatioKind.TIME)  # 0.5, 2.0, 0.25
    assert median(ratios) == 0.5
    assert median(a) / median(b) == 2.0


def test_goals() -> None:
    assert Goal(1.0, GoalKind.AT_MOST).met(1.0) and not Goal(1.0, GoalKind.AT_MOST).met(1.01)
    assert Goal(0.8, GoalKind.AT_LEAST).met(0.8) and not Goal(0.8, GoalKind.AT_LEAST).met(0.79)
    assert Goal(1.15, GoalKind.AT_MOST).describe() == "<= 1.15x"
    assert Goal(0.8, GoalKind.AT_LEAST).describe() == ">= 0.8x"


def fake_spec(calls: list[str], a: Iterator[float], b: Iterator[float], **kw: object) -> PairSpec:
    def side(name: str, values: Iterator[float]):  # type: ignore[no-untyped-def]
        def run() -> float:
            calls.append(name)
            value = next(values)
            if value < 0:
                raise Discard("not what the pair means")
            return value

        return run

    return PairSpec(
        name="fake",
        title="fake pair",
        a_label="a",
        b_label="b",
        a=side("A", a),
        b=side("B", b),
        goal=kw.get("goal", Goal(1.0, GoalKind.AT_MOST)),  # type: ignore[arg-type]
        ratio=kw.get("ratio", RatioKind.TIME),  # type: ignore[arg-type]
    )


def test_run_pair_interleaves_and_keeps_warmup_apart() -> None:
    calls: list[str] = []
    spec = fake_spec(calls, iter([9.0, 1.0, 2.0, 3.0]), iter([9.0, 2.0, 2.0, 2.0]))
    result = run_pair(spec, pairs=3, warmup=1, log=lambda _: None)
    assert calls == ["A", "B"] * 4
    assert result.warmup_a == [9.0] and result.warmup_b == [9.0]
    assert result.samples_a == [1.0, 2.0, 3.0] and result.samples_b == [2.0, 2.0, 2.0]
    assert result.ratios == [0.5, 1.0, 1.5]
    assert (result.median_a, result.median_b, result.median_ratio) == (2.0, 2.0, 1.0)
    assert result.met and result.goal == "<= 1x" and result.ratio_kind == "time"


def test_run_pair_throughput_goal_missed() -> None:
    spec = fake_spec(
        [], iter([4.0, 4.0]), iter([2.0, 2.0]), goal=Goal(0.8, GoalKind.AT_LEAST), ratio=RatioKind.THROUGHPUT
    )
    result = run_pair(spec, pairs=2, warmup=0, log=lambda _: None)
    assert result.median_ratio == 0.5 and not result.met


def test_discarded_pair_is_run_again_and_counted() -> None:
    calls: list[str] = []
    # pair 1's first A is discarded: the whole pair runs again (A, B), then pair 2
    spec = fake_spec(calls, iter([-1.0, 1.0, 1.0]), iter([1.0, 1.0]))
    result = run_pair(spec, pairs=2, warmup=0, log=lambda _: None)
    assert calls == ["A", "A", "B", "A", "B"]
    assert result.discarded == 1 and len(result.notes) == 1 and "pair 1 discarded" in result.notes[0]
    assert result.samples_a == [1.0, 1.0]


def test_discards_give_up_after_max_retries() -> None:
    spec = fake_spec([], iter([-1.0] * 3), iter([]))
    with pytest.raises(Discard):
        run_pair(spec, pairs=1, warmup=0, max_retries=2, log=lambda _: None)


def test_plan_quick_full_and_only() -> None:
    from bench.errors import BenchError
    from bench.run import Plan

    quick = Plan.make(quick=True, pairs=5)
    assert (quick.pairs, quick.queue_jobs, quick.memory_jobs) == (1, 100, 12) and "cold" not in quick.only
    full = Plan.make(quick=False, pairs=7)
    assert (full.pairs, full.warmup, full.queue_jobs, full.memory_jobs) == (7, 1, 500, 100) and "cold" in full.only
    assert Plan.make(quick=False, pairs=5, only=["setup,queue", "memory"]).only == ("setup", "queue", "memory")
    with pytest.raises(BenchError, match="unknown measurement"):
        Plan.make(quick=False, pairs=5, only=["warp"])


def test_memory_growth_from_job_10_to_the_last() -> None:
    from bench.memory import summarise

    samples = [
        {"job": n, "main_kib": 1000, "blender_kib": 1000 + n, "total_kib": 2000 + n, "blender_pid": 7}
        for n in (range(1, 101))
    ]
    out = summarise(samples, warm_max_jobs=50)
    assert out["baseline_job"] == 10 and out["rss_baseline_mib"] == round(2010 / 1024, 1)
    assert out["growth_percent"] == round(100 * 90 / 2010, 2) and out["met"]
    assert out["warm_blender_processes"] == 1


def test_check_names_each_missed_goal_and_refuses_a_quick_run(tmp_path: Path) -> None:
    from bench.errors import BenchError
    from bench.run import missed_goals, run_bench

    report = {
        "pairs": [{"name": "install", "met": False}, {"name": "setup", "met": True}],
        "memory": {"met": False},
    }
    assert missed_goals(report) == ["install", "memory"]
    with pytest.raises(BenchError, match="--check judges the goals"):
        run_bench(quick=True, pairs=1, only=["setup"], out=tmp_path / "r.json", check=True)
