"""Interleaved pairs: after a warm-up, A B A B ..., then medians and the median of the pairwise ratios.

A pair measures seconds on both sides. Its ratio is either a time ratio (A/B: lower is better) or a
throughput ratio (throughput A / throughput B for the same amount of work, which is B/A in seconds:
higher is better). Pairing each A with the B run right after it cancels slow drifts of the machine
(other processes, page cache, thermal), which is why the ratio is the median of pairwise ratios, not
the ratio of the medians.

A measurement that turns out not to be what the pair means (e.g. a "warm" setup that had to rebuild an
image because someone changed the sources meanwhile) raises `Discard`: the whole pair is run again,
up to `max_retries` times, and the discarded pair is counted in the result.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

Measure = Callable[[], float]  # runs one side once; returns the seconds it took


class RatioKind(StrEnum):
    TIME = "time"  # A/B of seconds
    THROUGHPUT = "throughput"  # (work/A) / (work/B) = B/A of seconds


class GoalKind(StrEnum):
    AT_MOST = "at_most"
    AT_LEAST = "at_least"


class Discard(Exception):
    """This run of one side does not measure what the pair means: run the pair again."""


@dataclass(frozen=True)
class Goal:
    limit: float
    kind: GoalKind

    def met(self, ratio: float) -> bool:
        return ratio <= self.limit if self.kind is GoalKind.AT_MOST else ratio >= self.limit

    def describe(self) -> str:
        return f"{'<=' if self.kind is GoalKind.AT_MOST else '>='} {self.limit:g}x"


@dataclass(frozen=True)
class PairSpec:
    name: str  # short id, used by --only
    title: str
    a_label: str
    b_label: str
    a: Measure
    b: Measure
    goal: Goal
    ratio: RatioKind = RatioKind.TIME


@dataclass(frozen=True)
class Slot:
    """One run in the schedule: pair index (from 0, warm-ups included), side "A" or "B", warm-up or not."""

    index: int
    side: str
    warmup: bool


@dataclass
class PairResult:
    name: str
    title: str
    a_label: str
    b_label: str
    ratio_kind: str
    ratio_meaning: str
    goal: str
    samples_a: list[float]
    samples_b: list[float]
    warmup_a: list[float]
    warmup_b: list[float]
    ratios: list[float]
    median_a: float
    median_b: float
    median_ratio: float
    met: bool
    discarded: int = 0
    notes: list[str] = field(default_factory=list)
    load_1min: list[float] = field(default_factory=list)  # the machine's load average as each counted pair began

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def schedule(pairs: int, warmup: int) -> list[Slot]:
    """The order of runs: `warmup` pairs (not counted), then `pairs` pairs, each A then B."""
    if pairs < 1 or warmup < 0:
        raise ValueError(f"need at least one pair and no negative warm-up (pairs={pairs}, warmup={warmup})")
    return [Slot(i, side, i < warmup) for i in range(warmup + pairs) for side in ("A", "B")]


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median of no samples")
    return float(statistics.median(values))


def pairwise_ratios(a: list[float], b: list[float], kind: RatioKind) -> list[float]:
    """Per pair: A/B for times, B/A for throughputs (the same work done in A and in B seconds)."""
    if len(a) != len(b):
        raise ValueError(f"unpaired samples: {len(a)} A, {len(b)} B")
    if any(x <= 0 for x in a + b):
        raise ValueError("a sample of zero or negative seconds")
    return [x / y if kind is RatioKind.TIME else y / x for x, y in zip(a, b, strict=True)]


def ratio_meaning(kind: RatioKind) -> str:
    return "A/B of seconds" if kind is RatioKind.TIME else "throughput A / throughput B (= B/A of seconds)"


def summarise(
    spec: PairSpec,
    samples_a: list[float],
    samples_b: list[float],
    *,
    warmup_a: list[float] | None = None,
    warmup_b: list[float] | None = None,
    discarded: int = 0,
    notes: list[str] | None = None,
    load_1min: list[float] | None = None,
) -> PairResult:
    ratios = pairwise_ratios(samples_a, samples_b, spec.ratio)
    ratio = median(ratios)
    return PairResult(
        name=spec.name,
        title=spec.title,
        a_label=spec.a_label,
        b_label=spec.b_label,
        ratio_kind=spec.ratio.value,
        ratio_meaning=ratio_meaning(spec.ratio),
        goal=spec.goal.describe(),
        samples_a=samples_a,
        samples_b=samples_b,
        warmup_a=warmup_a or [],
        warmup_b=warmup_b or [],
        ratios=ratios,
        median_a=median(samples_a),
        median_b=median(samples_b),
        median_ratio=ratio,
        met=spec.goal.met(ratio),
        discarded=discarded,
        notes=notes or [],
        load_1min=load_1min or [],
    )


def run_pair(
    spec: PairSpec,
    *,
    pairs: int,
    warmup: int = 1,
    max_retries: int = 3,
    log: Callable[[str], None] = print,
) -> PairResult:
    """Run spec's sides in `schedule(pairs, warmup)` order and summarise. A Discard re-runs that pair."""
    runs: dict[tuple[bool, str], list[float]] = {(w, s): [] for w in (True, False) for s in ("A", "B")}
    discarded, notes, loads = 0, [], []
    slots = schedule(pairs, warmup)
    for index in range(warmup + pairs):
        pair = [s for s in slots if s.index == index]
        if not pair[0].warmup:
            loads.append(round(os.getloadavg()[0], 2))
        for attempt in range(max_retries + 1):
            try:
                got = {slot.side: _one(spec, slot.side) for slot in pair}
                break
            except Discard as why:
                discarded += 1
                notes.append(f"pair {index + 1} discarded: {why}")
                log(f"  {spec.name}: pair {index + 1} discarded ({why}); again")
                if attempt == max_retries:
                    raise
        warm = pair[0].warmup
        for side, seconds in got.items():
            runs[(warm, side)].append(seconds)
        tag = "warm-up" if warm else f"pair {index - warmup + 1}/{pairs}"
        log(f"  {spec.name} {tag}: A {got['A']:.3f} s, B {got['B']:.3f} s")
    return summarise(
        spec,
        runs[(False, "A")],
        runs[(False, "B")],
        warmup_a=runs[(True, "A")],
        warmup_b=runs[(True, "B")],
        discarded=discarded,
        notes=notes,
        load_1min=loads,
    )


def _one(spec: PairSpec, side: str) -> float:
    seconds = spec.a() if side == "A" else spec.b()
    if seconds <= 0:
        raise ValueError(f"{spec.name} {side}: measured {seconds} s")
    return seconds


def timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds fn() took."""
    start = clock()
    fn()
    return clock() - start
