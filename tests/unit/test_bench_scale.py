"""The scale pair's reading of rq's job records (pure: no worker runs) and its place in the bench's plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bench.scale import JobRecord, cycles, spread

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def job(worker: str, start_ms: int, length_ms: int = 205) -> JobRecord:
    started = T0 + timedelta(milliseconds=start_ms)
    return JobRecord(worker, started, started + timedelta(milliseconds=length_ms))


def test_cycles_are_per_worker_starts_to_next_starts_in_time_order() -> None:
    records = [job("w1", 250), job("w2", 10), job("w1", 0), job("w2", 270), job("w1", 510), job("w3", 5)]
    # w1: 0, 250, 510; w2: 10, 270; w3 alone gives none
    assert cycles(records) == pytest.approx([0.25, 0.26, 0.26])
    assert cycles([job("w1", 0)]) == []
    assert cycles([]) == []


def test_spread_counts_jobs_per_worker_most_first() -> None:
    records = [job("w2", 0), job("w1", 1), job("w2", 2), job("w3", 3), job("w2", 4), job("w1", 5)]
    assert spread(records) == [3, 2, 1]
    assert spread([]) == []


def test_plan_has_the_scale_pair_with_fewer_jobs_when_quick() -> None:
    from bench.run import PAIRS, Plan

    assert "scale" in PAIRS
    assert Plan.make(quick=True, pairs=5).scale_jobs == 12
    assert Plan.make(quick=False, pairs=5).scale_jobs == 40
    assert Plan.make(quick=False, pairs=5, only=["scale"]).only == ("scale",)


def test_side_note_reads_the_cost_beyond_the_sleep() -> None:
    from bench.scale import Side

    side = Side(1, cycles=[0.25, 0.26, 0.25], in_horse=[0.201, 0.202], cpu_per_job=[0.03], redis_cpu_per_job=[0.0021])
    side.lead.append(0.004)
    side.tail.append(0.01)
    side.spreads.append([12])
    note = side.note("B")
    assert "cycle per job 250 ms median, 50 ms beyond the sleep (2 ms of it" in note
    assert (
        "CPU per job: the worker containers 30 ms, Redis 2.1 ms;" in note
        and "enqueue to first start 4 ms, last end to seen 10 ms" in note
    )
    assert note.endswith("jobs per worker 12")
