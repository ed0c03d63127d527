"""Pair 4: the JobManager path vs bare rq, for the same number of trivial jobs on the same Redis.

A: `JobManager.post` x N in this process (the bench stack's Redis and Postgres, a seeded user, preview:
the Postgres record, mq, pq), then `python -m invoke worker --burst --queues pq` with warm Blender off,
whose work horses run `bench.jobs.trivial_jobmanager`: `renderfarm.worker.job.run_job` (started with its
attempt, heartbeat thread, the scene read and parsed, the image file made, finished in mq and Postgres).
B: `Queue.enqueue("bench.jobs.bare", i)` x N, then `python -m rq.cli worker --burst pq`.
Both: seconds from the first post/enqueue until the burst worker has exited. Throughput = N / seconds;
the ratio is throughput A / throughput B (higher is better).
"""

from __future__ import annotations

import json
import sys
import time

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, RatioKind, run_pair
from bench.jobs import BARE, TRIVIAL_JOBMANAGER
from bench.proc import run
from bench.stack import BenchStack, Log
from provisioner.services import redis_url
from renderfarm.db import make_sessionmaker
from renderfarm.examples import example_scene_path
from renderfarm.jobs import JobManager
from renderfarm.keys import mq_key

NAME = "queue"
QUEUE = "pq"
TIMEOUT = 1800.0


def tiny_scene() -> dict[str, object]:
    scene: dict[str, object] = json.loads(example_scene_path().read_text())
    scene["objects"] = scene["objects"][:5]  # type: ignore[index]
    return scene


def measure(stack: BenchStack, *, pairs: int, warmup: int, jobs: int, log: Log) -> PairResult:
    from rq import Queue

    settings = stack.settings
    r = stack.redis()
    engine = stack.engine()
    manager = JobManager(
        r,
        make_sessionmaker(engine),
        prices={"preview": 0, "hd": settings.hd_price},
        heartbeat_ttl=settings.heartbeat_ttl,
        max_lost=settings.max_lost,
        job_func=TRIVIAL_JOBMANAGER,
    )
    user = stack.seed_user()
    scene = tiny_scene()
    queue = Queue(QUEUE, connection=r)
    worker_env = {"RENDERDEV_WARM_BLENDER": "0"}
    rq_env = {**stack.env, "RQ_REDIS_URL": redis_url(settings)}  # the password stays off the command line

    def jobmanager_path() -> float:
        start = time.perf_counter()
        mjids = [manager.post(user, "preview", scene).mjid for _ in range(jobs)]
        stack.invoke("worker", "--burst", "--queues", QUEUE, timeout=TIMEOUT, **worker_env)
        seconds = time.perf_counter() - start
        with r.pipeline(transaction=False) as pipe:
            for mjid in mjids:
                pipe.hget(mq_key(mjid), "state")
            states = [s.decode() if s else None for s in pipe.execute()]
        if states.count("finished") != jobs:
            raise BenchError(f"JobManager path: {states.count('finished')} of {jobs} jobs finished ({set(states)})")
        return seconds

    def bare_rq() -> float:
        failed_before = queue.failed_job_registry.count
        start = time.perf_counter()
        for i in range(jobs):
            queue.enqueue(BARE, i)
        run([sys.executable, "-m", "rq.cli", "worker", "--burst", QUEUE], env=rq_env, timeout=TIMEOUT)
        seconds = time.perf_counter() - start
        if len(queue) or queue.failed_job_registry.count != failed_before:
            raise BenchError(f"bare rq: {len(queue)} jobs left, {queue.failed_job_registry.count} failed")
        return seconds

    spec = PairSpec(
        name=NAME,
        title=f"JobManager vs bare rq throughput, {jobs} trivial jobs",
        a_label=f"JobManager.post x{jobs} + invoke worker --burst (run_job, no render)",
        b_label=f"Queue.enqueue x{jobs} + rq worker --burst (no-op)",
        a=jobmanager_path,
        b=bare_rq,
        goal=Goal(0.8, GoalKind.AT_LEAST),
        ratio=RatioKind.THROUGHPUT,
    )
    try:
        result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
    finally:
        r.close()
        engine.dispose()
    result.notes.append(
        f"jobs/s: A {jobs / result.median_a:.1f}, B {jobs / result.median_b:.1f} (medians); {jobs} jobs per run"
    )
    return result
