"""Pair `scale`: the same trivial jobs on 4 worker containers against 1, to show that the stack spreads its queue
over its workers (the distribution, not the CPU: each job only sleeps).

A: `invoke workers --replicas 4 --queues pq` (warm Blender off); B: the same with `--replicas 1`. Each side scales
first, outside the clock, and waits until rq lists exactly that many workers on pq, each idle (listening); then
the clock starts: JOBS rq jobs `time.sleep(0.2)` enqueued on pq in one pipeline with the stack's manager
connection, and the clock stops when pq's FinishedJobRegistry holds them all (polled every 20 ms: two ZCARDs, so
that the poll takes as little CPU as can be from the workers; each job's status is checked after the clock, and the
jobs are deleted, so each run starts from empty registries). No renderfarm job logic runs: the RenderWorker claims only
a job whose first argument is an mjid (a str), and these have a float. The ratio is throughput A / throughput B
(= B/A of seconds; higher is better): 4 workers would make it 4.0 if a job cost its worker nothing but the sleep.

What a job does cost besides the sleep (rq forks a work horse per job, which records the job started, then
finished, and exits; the worker waits for it and dequeues the next) is read back from rq's own job records and
the containers' CPU counters, for the notes: each worker's cycle (from one job's start to its next job's start),
the part of it inside the job's start and end, the CPU seconds the worker containers and Redis used per job, the fixed
time around a run (from the enqueue to the first start, and from the last end until the poll saw it).

The worker image is the bench's tag of the developer's (bench.stack.tag_images) when that is up to date, and is
otherwise built once by the first `invoke workers`, before any clock (about 4-5 minutes without Docker's cache of
the Blender layer, under a minute with it). `invoke workers` reads the project's own blender_versions.yaml: the
image installs Blender from the Debian package pinned there, which the bench's loopback mirror's versions file
(meant for the host's install from the mirror) does not list; nothing else `invoke workers` does reads it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, RatioKind, median, run_pair
from bench.stack import SETUP_TIMEOUT, BenchStack, Log
from provisioner.compose import WORKER_SERVICE
from provisioner.config import Settings
from provisioner.images import find_image

if TYPE_CHECKING:
    import docker
    import redis
    from rq import Queue

NAME = "scale"
QUEUE = "pq"
JOB_FUNC = "time.sleep"  # importable in the worker image, no renderfarm logic: the job is only its sleep
SLEEP = 0.2
WORKERS_A, WORKERS_B = 4, 1
POLL = 0.02
READY_TIMEOUT = 120.0  # rq lists exactly N idle workers on pq within this, after `invoke workers` returned
RUN_TIMEOUT = 300.0
SCALE_TIMEOUT = 900.0  # `invoke workers` stopping or starting containers (a stop waits up to 30 s each)
WORKER_ENV = {
    "RENDERDEV_WARM_BLENDER": "false",  # trivial jobs: no warm Blender started before each fork
    # the worker image's Debian package of Blender is pinned in the project's file, not in the mirror's
    "RENDERDEV_BLENDER_VERSIONS_FILE": str(Settings.model_fields["blender_versions_file"].default),
}


@dataclass(frozen=True)
class JobRecord:
    """One finished job as rq recorded it: which worker ran it, and when its work horse started and ended it."""

    worker: str
    started: datetime
    ended: datetime


@dataclass
class Side:
    """What the runs of one side recorded, for the notes (warm-ups included)."""

    workers: int
    cycles: list[float] = field(default_factory=list)  # s from a job's start to the next one's on the same worker
    in_horse: list[float] = field(default_factory=list)  # s from a job's start to its end (the sleep and a little)
    cpu_per_job: list[float] = field(default_factory=list)  # per run: CPU s of the worker containers / jobs
    redis_cpu_per_job: list[float] = field(default_factory=list)  # per run: CPU s of the Redis container / jobs
    lead: list[float] = field(default_factory=list)  # per run: s from the enqueue to the first job's start
    tail: list[float] = field(default_factory=list)  # per run: s from the last job's end until the poll saw it
    spreads: list[list[int]] = field(default_factory=list)  # per run: jobs per worker, most first

    def note(self, label: str) -> str:
        cycle, horse = median(self.cycles), median(self.in_horse)
        runs = " ".join("/".join(map(str, s)) for s in self.spreads)
        return (
            f"{label} ({self.workers} worker(s), warm-ups included): a worker's cycle per job {cycle * 1000:.0f} ms"
            f" median, {(cycle - SLEEP) * 1000:.0f} ms beyond the sleep ({(horse - SLEEP) * 1000:.0f} ms of it"
            f" between the job's start and end, the rest rq's bookkeeping, the horse's exit, the dequeue and the"
            f" next fork); CPU per job: the worker containers {median(self.cpu_per_job) * 1000:.0f} ms, Redis"
            f" {median(self.redis_cpu_per_job) * 1000:.1f} ms;"
            f" enqueue to first start {median(self.lead) * 1000:.0f} ms, last end to seen"
            f" {median(self.tail) * 1000:.0f} ms; jobs per worker {runs}"
        )


def cycles(records: Iterable[JobRecord]) -> list[float]:
    """Per worker, seconds between the starts of its consecutive jobs (a worker with one job gives none)."""
    by_worker: dict[str, list[datetime]] = defaultdict(list)
    for rec in records:
        by_worker[rec.worker].append(rec.started)
    out: list[float] = []
    for worker in sorted(by_worker):
        starts = sorted(by_worker[worker])
        out += [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    return out


def spread(records: Iterable[JobRecord]) -> list[int]:
    """Jobs per worker, most first."""
    return sorted(Counter(rec.worker for rec in records).values(), reverse=True)


def listening(r: redis.Redis, queue: Queue) -> list[tuple[str, str]]:
    """(name, state) of each worker rq lists on the queue."""
    from rq import Worker

    return sorted((str(w.name), str(w.get_state())) for w in Worker.all(connection=r, queue=queue))


def wait_idle(r: redis.Redis, queue: Queue, count: int, timeout: float = READY_TIMEOUT) -> list[str]:
    """Until rq lists exactly `count` workers on the queue, each idle (blocked on its queues); their names."""
    deadline = time.monotonic() + timeout
    while True:
        found = listening(r, queue)
        if len(found) == count and all(state == "idle" for _, state in found):
            return [name for name, _ in found]
        if time.monotonic() > deadline:
            raise BenchError(
                f"rq lists {len(found)} worker(s) on {queue.name}, not {count} idle ones, {timeout:.0f} s after"
                f" `invoke workers --replicas {count}`: {found or 'none'}",
                hint="docker ps -a; docker logs <worker container>",
            )
        time.sleep(0.1)


def containers_cpu(client: docker.DockerClient, project: str, service: str) -> float:
    """CPU seconds the running containers of the project's compose service have used so far (one-shot stats)."""
    from provisioner.dockerapi import PROJECT_LABEL, SERVICE_LABEL

    found = client.containers.list(
        filters={"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}, ignore_removed=True
    )
    total = sum(int(c.stats(stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"]) for c in found)
    return total / 1e9


def measure(stack: BenchStack, *, pairs: int, warmup: int, jobs: int, log: Log) -> PairResult:
    from rq import Queue
    from rq.job import Job, JobStatus

    r = stack.redis()
    queue = Queue(QUEUE, connection=r)
    sides = {n: Side(n) for n in (WORKERS_A, WORKERS_B)}
    worker_image = stack.settings.image("worker")
    project = stack.settings.project

    def scale(count: int, timeout: float = SCALE_TIMEOUT) -> tuple[float, str]:
        seconds, done = stack.invoke(
            "workers", "--replicas", str(count), "--queues", QUEUE, timeout=timeout, **WORKER_ENV
        )
        return seconds, done.stdout

    finished_key, failed_key = queue.finished_job_registry.key, queue.failed_job_registry.key

    def counts() -> tuple[int, int]:
        """Jobs in the queue's finished and failed registries (ZCARD: no clean-up, no write, two commands)."""
        with r.pipeline(transaction=False) as pipe:
            pipe.zcard(finished_key)
            pipe.zcard(failed_key)
            done, failed = pipe.execute()
        return int(done), int(failed)

    def failure(ids: Sequence[str]) -> BenchError:
        for job in Job.fetch_many(list(ids), connection=r):
            if job is not None and job.get_status() == JobStatus.FAILED:
                result = job.latest_result()
                return BenchError(
                    f"rq job {job.id} ({JOB_FUNC}) failed on {job.worker_name}: {result and result.exc_string}"
                )
        return BenchError(f"a job failed in {failed_key}, not one of this run's {len(ids)}")

    def collect(ids: Sequence[str], names: list[str]) -> list[JobRecord]:
        """The jobs' records, then the jobs deleted (outside the clock: the next run starts from an empty queue)."""
        done = [job for job in Job.fetch_many(list(ids), connection=r) if job is not None]
        unfinished = [job.id for job in done if job.get_status() != JobStatus.FINISHED]
        if unfinished or len(done) != len(ids):
            raise BenchError(f"{len(ids) - len(done) + len(unfinished)} of {len(ids)} jobs not finished: {unfinished}")
        records = [
            JobRecord(str(job.worker_name), job.started_at, job.ended_at)
            for job in done
            if job.started_at is not None and job.ended_at is not None
        ]
        with r.pipeline() as pipe:
            for job in done:
                job.delete(pipeline=pipe)
            pipe.execute()
        strangers = {rec.worker for rec in records} - set(names)
        if len(records) != len(ids) or strangers:
            raise BenchError(
                f"{len(records)} of {len(ids)} jobs have a start and an end"
                + (f"; run by workers that were not listed idle at the start: {sorted(strangers)}" if strangers else "")
            )
        return records

    def side(count: int) -> float:
        scale(count)  # outside the clock
        names = wait_idle(r, queue, count)
        if len(queue):
            raise BenchError(f"queue {QUEUE} holds {len(queue)} job(s) before the run: expected it empty")
        data = [Queue.prepare_data(JOB_FUNC, args=(SLEEP,)) for _ in range(jobs)]
        done_before, failed_before = counts()
        cpu_before = [containers_cpu(stack.client, project, service) for service in (WORKER_SERVICE, "redis")]
        wall_start = time.time()
        start = time.perf_counter()
        ids = [job.id for job in queue.enqueue_many(data)]  # one MULTI/EXEC pipeline
        deadline = start + RUN_TIMEOUT
        while True:
            done, failed = counts()
            if failed > failed_before:
                raise failure(ids)
            if done - done_before >= jobs:
                break
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{done - done_before} of {jobs} jobs on {count} worker(s) finished after {RUN_TIMEOUT:.0f} s"
                )
            time.sleep(POLL)
        seconds = time.perf_counter() - start
        wall_seen = time.time()
        cpu = [containers_cpu(stack.client, project, service) for service in (WORKER_SERVICE, "redis")]
        records = collect(ids, names)
        got = sides[count]
        got.cycles += cycles(records)
        got.in_horse += [(rec.ended - rec.started).total_seconds() for rec in records]
        got.cpu_per_job.append((cpu[0] - cpu_before[0]) / jobs)
        got.redis_cpu_per_job.append((cpu[1] - cpu_before[1]) / jobs)
        got.lead.append(min(rec.started for rec in records).timestamp() - wall_start)
        got.tail.append(wall_seen - max(rec.ended for rec in records).timestamp())
        got.spreads.append(spread(records))
        return seconds

    before = find_image(stack.client, worker_image)
    log(f"  {NAME}: worker image {worker_image} {'tagged' if before else 'missing'}; one container first")
    prepared, said = scale(WORKERS_B, timeout=SETUP_TIMEOUT)  # builds the image when missing or out of date
    after = find_image(stack.client, worker_image)
    step = next((line.strip() for line in said.splitlines() if f"image {worker_image}" in line), "")
    built = before is None or after is None or before.id != after.id
    image_note = (
        f"worker image {worker_image}: {'built' if built else 'the tagged one, up to date'} ({step});"
        f" the first `invoke workers --replicas {WORKERS_B}` took {prepared:.1f} s, outside every clock"
    )
    log(f"  {NAME}: {image_note}")

    spec = PairSpec(
        name=NAME,
        title=f"{jobs} trivial jobs (sleep {SLEEP} s) on {WORKERS_A} worker containers vs {WORKERS_B}",
        a_label=f"{jobs} x rq job {JOB_FUNC}({SLEEP}) on pq, {WORKERS_A} worker containers (invoke workers)",
        b_label=f"the same jobs on {WORKERS_B} worker container",
        a=lambda: side(WORKERS_A),
        b=lambda: side(WORKERS_B),
        goal=Goal(3.5, GoalKind.AT_LEAST),
        ratio=RatioKind.THROUGHPUT,
    )
    try:
        result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
    finally:
        try:
            scale(0)
        finally:
            r.close()
    result.notes.append(image_note)
    result.notes.append(
        f"jobs/s: A {jobs / result.median_a:.1f}, B {jobs / result.median_b:.1f} (medians); {jobs} jobs per run;"
        f" the least possible: A {jobs * SLEEP / WORKERS_A:.2f} s, B {jobs * SLEEP / WORKERS_B:.2f} s"
    )
    for label, n in (("A", WORKERS_A), ("B", WORKERS_B)):
        if sides[n].cycles:
            result.notes.append(sides[n].note(label))
    return result
