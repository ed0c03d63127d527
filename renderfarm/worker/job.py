"""The rq job a render worker runs (`render_job`, JobManager's RENDER_FUNC): render one mjid with the host's
Blender and record the outcome in mq.

The job runs in rq's work horse, a fork of the worker's main process, and takes what it needs from the
RenderWorker that forked it (renderfarm.worker.render_worker.current_worker): its settings, its warm Blender
and the database connection it lends. Run by a worker that is no RenderWorker (rq's own CLI), it reads its
settings from the RENDERFARM_* environment (renderfarm.settings) and connects on its own.

How the job reaches the stack is its link (renderfarm.worker.farm_link): a worker with a worker file talks only to
the API (the image uploaded); the stack's own host worker uses the JobManager and writes the renders folder.
The job is started only through the rq job that carries it (`JobManager.mark_started` is fenced by it). While
Blender runs, a thread keeps the job's heartbeat alive (renderfarm.worker.liveness), so a worker that vanishes
(SIGKILL, a VM gone without notice) is found by the reaper and its job retried on sq. A worker told to stop
(SIGTERM, the cloud's preemption notice) gets ShutDownImminentException here: Blender is stopped and the job is
put on sq at once, recorded as preempted; once the render is done, the notice no longer interrupts the recording
of the outcome (`recording_only`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from rq import get_current_job
from rq.exceptions import ShutDownImminentException
from rq.job import Job

from renderfarm.errors import (
    BlenderRenderError,
    BlenderVanished,
    RenderConfigError,
    RenderfarmError,
    StaleAttempt,
    StaleRqJob,
)
from renderfarm.jobs import RENDER_FUNC, JobManager
from renderfarm.keys import Outcome, QueueName
from renderfarm.quality import RenderProfile
from renderfarm.scene import Scene, parse_scene
from renderfarm.settings import FarmSettings
from renderfarm.worker.blender_process import render_scene
from renderfarm.worker.farm_link import ApiLink, FarmLink, ManagerLink
from renderfarm.worker.liveness import Heartbeat
from renderfarm.worker.own_manager import close_manager, open_manager
from renderfarm.worker.render_worker import current_worker

log = logging.getLogger("renderfarm.worker.job")
# Blender ended by one of these was interrupted (the machine is going away), not failed by the scene.
INTERRUPTING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})

Renderer = Callable[[Scene, RenderProfile, Path], object]


def job_settings() -> FarmSettings:
    """The settings of the RenderWorker running this job; without one, the RENDERFARM_* environment's."""
    worker = current_worker()
    return worker.settings if worker is not None else FarmSettings.from_env()


def interrupted(exc: BlenderRenderError) -> bool:
    """Blender was killed (or its warm process vanished) rather than failing on the scene."""
    if isinstance(exc, BlenderVanished):
        return exc.returncode is None or exc.returncode < 0
    return exc.returncode is not None and exc.returncode < 0 and -exc.returncode in INTERRUPTING_SIGNALS


def render_with_blender(scene: Scene, profile: RenderProfile, out: Path) -> None:
    """The worker's warm Blender when it has one for this job, else a Blender process for this job."""
    worker = current_worker()
    warm_blender = worker.warm_for_job() if worker is not None else None
    if warm_blender is not None:
        warm_blender.render(scene, profile, out)
    else:
        render_scene(scene, profile, out, blender=job_settings().blender_path)


def render_job(mjid: str) -> str:
    """Run by rq in the worker's work horse. Returns what became of the job."""
    return run_job(mjid, render_with_blender)


def horse_link(job: Job, settings: FarmSettings) -> FarmLink:
    """How this job reaches the stack (renderfarm.worker.farm_link).

    With a worker file (settings.access): the API, through an HTTP client of this horse's own (a pooled connection
    never crosses a fork). Else, in a RenderWorker's work horse: the job's own Redis connection (rq's, already open)
    and the database connection the worker lends its horses (renderfarm.worker.lent_database). Elsewhere:
    connections of its own."""
    if settings.access is not None:
        return ApiLink(settings.access)
    worker = current_worker()
    lent = worker.lent if worker is not None else None
    func = job.func_name or RENDER_FUNC  # a retry on sq runs the same function
    if lent is not None:
        manager = JobManager(
            job.connection,
            lent.borrow(),
            heartbeat_ttl=settings.reliability.heartbeat_ttl,
            max_lost=settings.reliability.max_lost,
            job_func=func,
            images_dir=settings.renders_dir,
        )
        return ManagerLink(manager, settings.renders_dir, close=lent.release)
    own = open_manager(settings)
    own.job_func = func
    return ManagerLink(own, settings.renders_dir, close=lambda: close_manager(own))


def recording_only() -> None:
    """From here on the work horse only records the job's outcome (in Redis, then Postgres: milliseconds). A
    shutdown notice now (rq's HerokuWorker tells the horse with SIGRTMIN, which raises ShutDownImminentException
    wherever the horse is) must not cut that short between the two, or in the middle of a database call."""
    with contextlib.suppress(ValueError):  # not a process's main thread (no work horse): nothing to ignore
        signal.signal(signal.SIGRTMIN, signal.SIG_IGN)


def run_job(mjid: str, render: Renderer) -> str:
    """The JobManager side of a job: started, heartbeat, render, then finished / failed / requeued."""
    job = get_current_job()
    if job is None:
        raise RenderfarmError(f"job {mjid}: run_job runs inside an rq job (a worker's work horse), not on its own")
    settings = job_settings()
    link = horse_link(job, settings)
    try:
        # A folder of the job's own for a link that uploads the image (about a millisecond to make and remove);
        # the stack's own worker renders straight into the renders folder.
        folder = tempfile.TemporaryDirectory(prefix="renderfarm-job-") if link.uploads else contextlib.nullcontext()
        with folder as work_dir:
            return attempt_job(link, job, mjid, settings, render, Path(work_dir or settings.renders_dir))
    except (StaleAttempt, StaleRqJob) as exc:
        log.warning("%s: the job moved on without this worker; its result is dropped", exc)
        return "stale"
    finally:
        link.close()


def attempt_job(link: FarmLink, job: Job, mjid: str, settings: FarmSettings, render: Renderer, work_dir: Path) -> str:
    """One attempt: started through `job` (the rq job), rendered with a heartbeat, and its end reported."""
    worker = job.worker_name or f"pid-{os.getpid()}"
    started = link.start(mjid, worker, job.id)
    attempt = started.attempt
    requeue_reason = Outcome.PREEMPTED if started.queue == QueueName.PREEMPTIBLE else Outcome.INTERRUPTED
    beat = Heartbeat(link, mjid, attempt)
    beat.start()
    out = link.output_path(mjid, attempt, work_dir)
    try:
        profile = settings.profile(started.quality)
        render(parse_scene(started.scene), profile if started.tile is None else profile.tile(*started.tile), out)
    except ShutDownImminentException:
        recording_only()
        link.requeue(mjid, attempt, requeue_reason)
        return f"{requeue_reason}: requeued on sq"
    except BlenderRenderError as exc:
        recording_only()
        if interrupted(exc):
            link.requeue(mjid, attempt, Outcome.INTERRUPTED, error=str(exc))
            return f"interrupted ({exc.reason}): requeued on sq"
        link.fail(mjid, attempt, str(exc))
        raise
    except (RenderConfigError, ValueError) as exc:
        recording_only()
        link.fail(mjid, attempt, str(exc))
        raise
    finally:
        beat.stop()
    recording_only()
    link.finish(mjid, attempt, out)
    return "finished"
