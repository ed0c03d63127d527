"""A worker's resident memory over many preview jobs: the worker's main process plus its warm Blender.

One long-running `invoke worker --queues pq` (warm Blender on, its default `warm_max_jobs`), fed one
preview at a time through the API (a five-object scene, RENDERFARM_PREVIEW_SAMPLES=2, 640x360). After
each job is finished, VmRSS of the worker's process and of every Blender below it is read from /proc
(the work horse, forked per job, is gone or going and is not counted). Growth = RSS after the last job
over RSS after job 10. A warm Blender is replaced after `warm_max_jobs` jobs by design: the samples
record its pid, so a restart shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.preview import api_client, fetch_render
from bench.queue import tiny_scene
from bench.stack import BenchStack, Log, descendants

NAME = "memory"
GOAL_PERCENT = 10.0
BASELINE_JOB = 10


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def blender_pids(pid: int) -> list[int]:
    found = []
    for p in descendants(pid):
        try:
            argv0 = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"blender"):
            found.append(p)
    return found


def measure(stack: BenchStack, *, jobs: int, log: Log) -> dict[str, Any]:
    user = stack.seed_user()
    scene = tiny_scene()
    r = stack.redis()
    worker = stack.start_worker("pq", "memory-worker", RENDERFARM_PREVIEW_SAMPLES="2")
    samples: list[dict[str, int]] = []
    try:
        stack.wait_for_worker(worker, "memory-worker", r)
        with api_client(stack.settings, user) as http:
            for n in range(1, jobs + 1):
                fetch_render(http, user, scene)
                blenders = blender_pids(worker.pid)
                main = rss_kib(worker.pid)
                blender = sum(rss_kib(p) for p in blenders)
                samples.append(
                    {"job": n, "main_kib": main, "blender_kib": blender, "total_kib": main + blender,
                     "blender_pid": blenders[0] if blenders else 0}
                )  # fmt: skip
                if n == 1 or n % 10 == 0 or n == jobs:
                    log(f"  memory: after job {n}: {(main + blender) / 1024:.0f} MiB (worker {main / 1024:.0f}, "
                        f"Blender {blender / 1024:.0f})")  # fmt: skip
    except BaseException:
        log(f"memory worker log:\n{stack.worker_log('memory-worker')}")
        raise
    finally:
        stack.stop_worker(worker)
        r.close()
    return summarise(samples, warm_max_jobs=stack.settings.warm_max_jobs)


def summarise(samples: list[dict[str, int]], *, warm_max_jobs: int) -> dict[str, Any]:
    base = samples[min(BASELINE_JOB, len(samples)) - 1]
    last = samples[-1]
    growth = 100.0 * (last["total_kib"] - base["total_kib"]) / base["total_kib"]
    peak = max(samples[base["job"] - 1 :], key=lambda s: s["total_kib"])
    pids = list(dict.fromkeys(s["blender_pid"] for s in samples))
    return {
        "name": NAME,
        "jobs": len(samples),
        "baseline_job": base["job"],
        "rss_baseline_mib": round(base["total_kib"] / 1024, 1),
        "rss_last_mib": round(last["total_kib"] / 1024, 1),
        "growth_percent": round(growth, 2),
        "peak_after_baseline_mib": round(peak["total_kib"] / 1024, 1),
        "peak_job": peak["job"],
        "peak_growth_percent": round(100.0 * (peak["total_kib"] - base["total_kib"]) / base["total_kib"], 2),
        "warm_blender_processes": len(pids),
        "warm_max_jobs": warm_max_jobs,
        "goal": f"<= {GOAL_PERCENT:g}% growth",
        "met": growth <= GOAL_PERCENT,
        "samples": samples,
    }
