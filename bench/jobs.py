"""The rq job functions of the queue pair. Light to import: rq imports this module in every work horse.

`trivial_jobmanager` is the JobManager side of a render job (`renderfarm.worker.job.run_job`: started with its
attempt, heartbeat thread, the scene read and parsed, finished in mq and Postgres) with a renderer that
renders nothing: it only creates the image file where the render would put it (encoding even a black
640x360 PNG costs a fresh work horse about 1.5 ms, which is no part of the queue's overhead). `bare`
does nothing, for bare rq.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRIVIAL_JOBMANAGER = "bench.jobs.trivial_jobmanager"
BARE = "bench.jobs.bare"


def touch_image(scene: Any, profile: Any, out: Path) -> None:
    """A Renderer (renderfarm.worker.job.Renderer) that renders nothing: the image file is made, empty."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch()


def trivial_jobmanager(mjid: str) -> str:
    from renderfarm.worker.job import run_job

    return run_job(mjid, touch_image)


def bare(i: int) -> int:
    return i
