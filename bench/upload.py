"""Pair `upload`: how a finished HD image reaches the stack, for a worker with a worker file against one that shares the
stack's folder.

A: the worker file's way (renderfarm.worker.farm_link.ApiLink.finish): the PNG read from the worker's work folder,
`PUT /worker/jobs/{mjid}/attempts/{n}/image` over loopback to the api container, which checks it (one whole PNG of
the job's size: every chunk's CRC), stores it (temp file, fsync, rename) and finishes the job (Redis and Postgres).
B: what a worker sharing the stack's renders folder does, the best way by hand: the same bytes written straight into
the folder (as Blender writes its output: no fsync), then `JobManager.mark_finished` on the stack's Redis and
Postgres directly (renderfarm.worker.farm_link.ManagerLink.finish).
Both: JOBS HD jobs, posted and started before the clock starts (started with the bench's worker credential, as the
API's start route does), delivered one after the other as one worker would; seconds for all of them. The ratio is
A/B of seconds (lower is better).
"""

from __future__ import annotations

import random
import struct
import time
import zlib

from rich.console import Console
from rq import Queue

from bench.harness import Goal, GoalKind, PairResult, PairSpec, RatioKind, run_pair
from bench.queue import tiny_scene
from bench.stack import BenchStack, Log
from provisioner.worker_access import worker_config
from renderfarm.db import make_sessionmaker
from renderfarm.jobs import JobManager
from renderfarm.keys import QueueName, image_name
from renderfarm.quality import DEFAULT_PROFILES, Quality
from renderfarm.settings import WorkerAccess
from renderfarm.worker.farm_link import ApiLink, ManagerLink

NAME = "upload"
CREDENTIAL = "bench-upload"


def hd_png() -> bytes:
    """A 1920x1080 RGB PNG about the size of Blender's HD renders of the example room (3 MB): pseudo-random pixels
    of 4 bits each, so zlib cannot shrink it much (a deterministic seed: every run sends the same bytes)."""
    profile = DEFAULT_PROFILES[Quality.HD]
    width, height = profile.width, profile.height
    rnd = random.Random(11)
    low = bytes(b & 0x0F for b in range(256))
    raw = b"".join(b"\x00" + rnd.randbytes(width * 3).translate(low) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def measure(stack: BenchStack, *, pairs: int, warmup: int, jobs: int, log: Log) -> PairResult:
    settings = stack.settings
    work = settings.project_state_dir / "bench-upload"
    work.mkdir(parents=True, exist_ok=True)
    access_file = worker_config(
        settings, Console(quiet=True), name=CREDENTIAL, output=work / "worker.json", rotate=False
    )
    access = WorkerAccess.from_file(access_file)
    image = hd_png()
    runs = warmup + pairs
    user = stack.seed_user(credits=settings.hd_price * jobs * 2 * runs)
    r, engine = stack.redis(), stack.engine()
    manager = JobManager(
        r,
        make_sessionmaker(engine),
        prices={"preview": 0, "hd": settings.hd_price},
        heartbeat_ttl=3600,  # started long before they are finished: no reaper may take them meanwhile
    )
    scene = tiny_scene()

    def started(count: int) -> list[tuple[str, int]]:
        """`count` HD jobs posted and started (outside the clock), as (mjid, attempt). Their rq jobs are taken off
        pq again at once: no worker is meant to render them (a later pair's workers would find them queued)."""
        out = []
        for _ in range(count):
            view = manager.post(user, "hd", scene)
            begun = manager.mark_started(view.mjid, "bench-worker", rq_job=view.mjid, credential=CREDENTIAL)
            out.append((view.mjid, begun.attempts))
        Queue(QueueName.PREEMPTIBLE, connection=r).empty()
        return out

    def through_api() -> float:
        todo = started(jobs)
        for mjid, attempt in todo:  # the renders Blender wrote into the worker's own work folder
            (work / image_name(mjid, attempt)).write_bytes(image)
        link = ApiLink(access)
        try:
            begin = time.perf_counter()
            for mjid, attempt in todo:
                link.finish(mjid, attempt, work / image_name(mjid, attempt))
            return time.perf_counter() - begin
        finally:
            link.close()

    def into_folder() -> float:
        todo = started(jobs)
        link = ManagerLink(manager, settings.renders_dir)
        begin = time.perf_counter()
        for mjid, attempt in todo:
            path = settings.renders_dir / image_name(mjid, attempt)
            path.write_bytes(image)
            link.finish(mjid, attempt, path)
        return time.perf_counter() - begin

    spec = PairSpec(
        name=NAME,
        title=f"a worker's HD image to the stack: upload to the API vs write into the shared folder, {jobs} jobs",
        a_label=f"PUT .../image x{jobs} ({len(image) / 1e6:.1f} MB PNG): checked, stored, job finished by the API",
        b_label=f"write into the renders folder + JobManager.mark_finished x{jobs}",
        a=through_api,
        b=into_folder,
        goal=Goal(1.5, GoalKind.AT_MOST),
        ratio=RatioKind.TIME,
    )
    try:
        result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
    finally:
        r.close()
        engine.dispose()
    per = 1000 / jobs
    result.notes.append(
        f"per image: A {result.median_a * per:.1f} ms, B {result.median_b * per:.1f} ms (medians);"
        f" PNG {len(image)} bytes"
    )
    return result
