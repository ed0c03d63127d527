"""`invoke bench`: make the bench stack, run the chosen measurements, print the table, write the JSON.

Full run: `pairs` pairs after one warm-up pair each, the queue pair with 500 jobs, the scale pair with 40,
memory over 100 jobs, and the cold setup. Quick run (CI): one pair each, the queue pair with 100 jobs and no
warm-up, the scale pair with 12, memory over 12 jobs, no cold setup; it proves the bench runs, and says so
next to its figures.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import machine
from bench.errors import BenchError
from bench.harness import PairResult
from bench.stack import BenchStack, bench_stack

PAIRS = (
    "setup",
    "preview",
    "preview_small",
    "iterate",
    "install",
    "queue",
    "api_load",
    "upload",
    "scale",
    "kit",
    "live",
    "page",
)
OTHERS = ("memory", "cold")
NAMES = PAIRS + OTHERS
Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    quick: bool
    pairs: int
    warmup: int
    queue_jobs: int
    queue_warmup: int
    memory_jobs: int
    api_requests: int
    upload_jobs: int
    scale_jobs: int
    only: tuple[str, ...]

    @classmethod
    def make(cls, *, quick: bool, pairs: int, only: Iterable[str] = ()) -> Plan:
        names = tuple(dict.fromkeys(n.strip() for item in only for n in item.split(",") if n.strip()))
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise BenchError(f"unknown measurement(s): {', '.join(unknown)} (known: {', '.join(NAMES)})")
        if not quick and pairs < 1:
            raise BenchError(f"--pairs must be at least 1, got {pairs}")
        chosen = names or tuple(n for n in NAMES if not (quick and n == "cold"))
        if quick:
            return cls(True, 1, 1, 100, 0, 12, 160, 5, 12, chosen)
        return cls(False, pairs, 1, 500, 1, 100, 960, 20, 40, chosen)


def missed_goals(report: dict[str, Any]) -> list[str]:
    mem = report.get("memory")
    return [p["name"] for p in report["pairs"] if not p["met"]] + (["memory"] if mem and not mem["met"] else [])


def run_bench(
    *, quick: bool, pairs: int, only: Iterable[str], out: Path, check: bool = False, log: Log = print
) -> dict[str, Any]:
    """Run the plan against a fresh bench stack; write the JSON to out; return it. With check (a full run only),
    a missed goal is an error (exit 1 from the task), after the table and the JSON are written."""
    if check and quick:
        raise BenchError("--check judges the goals, which a quick run cannot: drop --quick (or --check)")
    from provisioner.dockerapi import docker_client

    plan = Plan.make(quick=quick, pairs=pairs, only=only)
    report: dict[str, Any] = {
        "date": machine.now(),
        "git": machine.commit(),
        "machine": machine.describe(),
        "command": " ".join(["python -m invoke bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else "run_bench",
        "quick": plan.quick,
        "plan": asdict(plan),
        "pairs": [],
    }
    log(f"bench: {'quick' if plan.quick else 'full'} run of {', '.join(plan.only)}")
    started = time.monotonic()
    client = docker_client()
    try:
        with bench_stack(client, log) as stack:
            for name in plan.only:
                log(f"== {name}")
                result = _measure(name, stack, plan, log)
                if isinstance(result, PairResult):
                    report["pairs"].append(result.to_json())
                else:
                    report[name] = result
    finally:
        client.close()
        report["machine"]["load_at_end"] = machine.load()
        report["seconds"] = round(time.monotonic() - started, 1)
        write(out, report)
    for line in table(report):
        log(line)
    log(f"bench: results written to {out}")
    missed = missed_goals(report)
    if check and missed:
        raise BenchError(f"goals missed: {', '.join(missed)} (figures in {out})", hint="see bench/RESULTS.md")
    return report


def _measure(name: str, stack: BenchStack, plan: Plan, log: Log) -> PairResult | dict[str, Any]:
    if name == "setup":
        from bench import warm_setup

        return warm_setup.measure(stack, pairs=plan.pairs, warmup=plan.warmup, log=log)
    if name in ("preview", "preview_small", "iterate"):
        from bench import preview

        small, iterate = name == "preview_small", name == "iterate"
        return preview.measure(stack, pairs=plan.pairs, warmup=plan.warmup, log=log, small=small, iterate=iterate)
    if name == "install":
        from bench import install

        return install.measure(stack, pairs=plan.pairs, warmup=plan.warmup, log=log)
    if name == "queue":
        from bench import queue

        return queue.measure(stack, pairs=plan.pairs, warmup=plan.queue_warmup, jobs=plan.queue_jobs, log=log)
    if name == "api_load":
        from bench import api_load

        return api_load.measure(stack, pairs=plan.pairs, warmup=plan.warmup, requests=plan.api_requests, log=log)
    if name == "upload":
        from bench import upload

        return upload.measure(stack, pairs=plan.pairs, warmup=plan.warmup, jobs=plan.upload_jobs, log=log)
    if name == "scale":
        from bench import scale

        return scale.measure(stack, pairs=plan.pairs, warmup=plan.warmup, jobs=plan.scale_jobs, log=log)
    if name == "kit":
        from bench import kit

        return kit.measure(stack, pairs=plan.pairs, warmup=plan.warmup, log=log)
    if name == "live":
        from bench import live

        return live.measure(stack, pairs=plan.pairs, warmup=plan.warmup, log=log)
    if name == "page":
        from bench import page

        return page.measure(stack, pairs=plan.pairs, warmup=plan.warmup, log=log)
    if name == "memory":
        from bench import memory

        return memory.measure(stack, jobs=plan.memory_jobs, log=log)
    from bench import cold

    return cold.measure(stack, log=log)


def write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)


def table(report: dict[str, Any]) -> list[str]:
    """The summary: one line per pair (median A, median B, median ratio, goal, met), then memory and cold."""
    lines = [f"{'pair':<14} {'median A':>10} {'median B':>10} {'ratio':>7}  {'goal':<9} met"]
    for p in report["pairs"]:
        met = "yes" if p["met"] else "NO"
        ratio = f"{p['median_ratio']:.2f}x"
        lines.append(f"{p['name']:<14} {p['median_a']:>9.3f}s {p['median_b']:>9.3f}s {ratio:>7}  {p['goal']:<9} {met}")
    mem = report.get("memory")
    if mem:
        lines.append(
            f"{'memory':<14} RSS after job {mem['baseline_job']} {mem['rss_baseline_mib']} MiB, "
            f"after job {mem['jobs']} {mem['rss_last_mib']} MiB: {mem['growth_percent']:+.1f}%  goal {mem['goal']}  "
            f"{'yes' if mem['met'] else 'NO'}"
        )
    cold = report.get("cold")
    if cold:
        lines.append(
            f"cold           invoke setup from nothing: {cold['seconds']:.0f} s (see the JSON for what was cold)"
        )
    if report["quick"]:
        lines.append("quick run: one pair each; it proves the bench runs, its figures are not the results")
    missed = missed_goals(report)
    lines.append(f"goals missed: {', '.join(missed)}" if missed else "every goal met")
    return lines
