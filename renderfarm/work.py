"""The rq job a render worker runs: render one mjid with the host's Blender and record the outcome in mq.

The image is written to the renders folder (RENDERFARM_RENDERS_DIR), which the api container mounts
and serves; the worker never talks to the API.

From the moment a worker takes a job off its queue until the job is done with, the worker keeps a claim
on it (`Claim`, in the worker's main process): the orphan rescue leaves a claimed job alone, however long
the worker's warm Blender takes to start. The job itself is started only through the rq job that carries
it (`JobManager.mark_started` is fenced by it). While Blender runs, a thread keeps the job's heartbeat
alive, so a worker that vanishes (SIGKILL, a VM gone without notice) is found by the reaper and its job
retried on sq. A worker told to stop (SIGTERM, the cloud's preemption notice) gets ShutDownImminentException
here: Blender is stopped and the job is put on sq at once, recorded as preempted; once the render is done,
the notice no longer interrupts the recording of the outcome (`recording_only`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from rq import get_current_job
from rq.exceptions import ShutDownImminentException
from rq.job import Job

from renderfarm import horse_db, warm
from renderfarm.clients import make_engine, make_redis
from renderfarm.db import make_sessionmaker
from renderfarm.errors import (
    BlenderRenderError,
    BlenderVanished,
    RenderConfigError,
    RenderfarmError,
    StaleAttempt,
    StaleRqJob,
)
from renderfarm.jobs import RENDER_FUNC, JobManager
from renderfarm.render import RenderProfile, profile_for, render_scene
from renderfarm.scene import Scene, parse_scene
from renderfarm.settings import Reliability, ServiceSettings

log = logging.getLogger("renderfarm.work")
# Blender ended by one of these was interrupted (the machine is going away), not failed by the scene.
INTERRUPTING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})


def renders_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = env.get("RENDERFARM_RENDERS_DIR", "").strip()
    if not raw:
        raise RenderConfigError("RENDERFARM_RENDERS_DIR is not set: the worker does not know where to put images")
    return Path(raw)


def image_name(mjid: str, attempt: int) -> str:
    """One file per attempt: the job records the one its current attempt made, so a worker that was
    presumed lost and comes back can never replace the image the job points to."""
    return f"{mjid}-{attempt}.png"


def job_manager(settings: ServiceSettings, reliability: Reliability) -> JobManager:
    redis = make_redis(settings, socket_timeout=None)
    return JobManager(
        redis,
        make_sessionmaker(make_engine(settings)),
        heartbeat_ttl=reliability.heartbeat_ttl,
        max_lost=reliability.max_lost,
    )


def close(manager: JobManager) -> None:
    manager.redis.close()
    bind = manager.sessions.kw.get("bind")
    if bind is not None:
        bind.dispose()


class Heartbeat(threading.Thread):
    """Refreshes the job's heartbeat every third of its TTL until stopped or the attempt goes stale."""

    def __init__(self, manager: JobManager, mjid: str, attempt: int) -> None:
        super().__init__(name=f"heartbeat-{mjid}", daemon=True)
        self.manager, self.mjid, self.attempt = manager, mjid, attempt
        self.stopped = threading.Event()

    def run(self) -> None:
        period = self.manager.heartbeat_ttl / 3
        while not self.stopped.wait(period):
            try:
                if not self.manager.heartbeat(self.mjid, self.attempt):
                    log.warning("job %s attempt %d is no longer ours; heartbeat stops", self.mjid, self.attempt)
                    return
            except Exception:  # noqa: BLE001 - a blip in Redis must not kill the render; the TTL covers it
                log.exception("heartbeat for %s failed", self.mjid)

    def stop(self) -> None:
        self.stopped.set()


class Claim(threading.Thread):
    """In a worker's main process, from the moment it has taken rq job `rq_job` (carrying mjid) off its
    queue: claims the job at once (`JobManager.claim`) and refreshes the claim every third of the heartbeat
    TTL until stopped, i.e. for as long as the worker is getting ready (its warm Blender starting) and its
    work horse runs."""

    def __init__(self, manager: JobManager, mjid: str, rq_job: str) -> None:
        super().__init__(name=f"claim-{mjid}", daemon=True)
        self.manager, self.mjid, self.rq_job = manager, mjid, rq_job
        self.stopped = threading.Event()

    def start(self) -> None:
        try:
            self.manager.claim(self.mjid, self.rq_job)  # before anything else can take time
        except Exception:  # noqa: BLE001 - Redis away: the job is unclaimed, so the rescue's grace applies
            log.exception("claim on %s failed", self.mjid)
        super().start()

    def run(self) -> None:
        while not self.stopped.wait(self.manager.heartbeat_ttl / 3):
            try:
                self.manager.claim(self.mjid, self.rq_job)
            except Exception:  # noqa: BLE001 - a blip in Redis: the next refresh comes well within the TTL
                log.exception("claim on %s failed", self.mjid)

    def stop(self) -> None:
        self.stopped.set()


def interrupted(exc: BlenderRenderError) -> bool:
    """Blender was killed (or its warm process vanished) rather than failing on the scene."""
    if isinstance(exc, BlenderVanished):
        return exc.returncode is None or exc.returncode < 0
    return exc.returncode is not None and exc.returncode < 0 and -exc.returncode in INTERRUPTING_SIGNALS


Renderer = Callable[[Scene, RenderProfile, Path], object]


def render_with_blender(scene: Scene, profile: RenderProfile, out: Path) -> None:
    """The worker's warm Blender when it has one, else a Blender process for this job."""
    warm_blender = warm.current()
    if warm_blender is not None:
        warm_blender.render(scene, profile, out)
    else:
        render_scene(scene, profile, out, blender=os.environ.get("RENDERFARM_BLENDER", "blender"))


def render_job(mjid: str) -> str:
    """Run by rq in the worker's work horse. Returns what became of the job."""
    return run_job(mjid, render_with_blender)


def horse_manager(job: Job | None) -> tuple[JobManager, Callable[[], None]]:
    """The JobManager for this job and what to call when the job is done with it.

    In a worker's work horse: the job's own Redis connection (rq's, already open) and the database
    connection the worker lends its horses (renderfarm.horse_db). Elsewhere: connections of its own."""
    reliability = Reliability.from_env()
    lent = horse_db.current()
    func = (job.func_name if job is not None else None) or RENDER_FUNC  # a retry on sq runs the same function
    if job is not None and lent is not None:
        manager = JobManager(
            job.connection,
            lent.borrow(),
            heartbeat_ttl=reliability.heartbeat_ttl,
            max_lost=reliability.max_lost,
            job_func=func,
        )
        return manager, lent.release
    manager = job_manager(ServiceSettings.from_env(), reliability)
    manager.job_func = func
    return manager, lambda: close(manager)


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
    manager, done = horse_manager(job)
    try:
        worker = job.worker_name or f"pid-{os.getpid()}"
        view = manager.mark_started(mjid, worker, rq_job=job.id)
        attempt = view.attempts
        requeue_reason = "preempted" if view.queue.value == "pq" else "interrupted"
        beat = Heartbeat(manager, mjid, attempt)
        beat.start()
        out = renders_dir() / image_name(mjid, attempt)
        try:
            render(parse_scene(manager.scene(mjid)), profile_for(view.quality), out)
        except ShutDownImminentException:
            recording_only()
            manager.retry_on_standard(mjid, requeue_reason, attempt=attempt)
            return f"{requeue_reason}: requeued on sq"
        except BlenderRenderError as exc:
            recording_only()
            if interrupted(exc):
                manager.retry_on_standard(mjid, "interrupted", attempt=attempt, error=str(exc))
                return f"interrupted ({exc.reason}): requeued on sq"
            manager.mark_failed(mjid, str(exc), attempt=attempt)
            raise
        except (RenderConfigError, ValueError) as exc:
            recording_only()
            manager.mark_failed(mjid, str(exc), attempt=attempt)
            raise
        finally:
            beat.stop()
        recording_only()
        try:
            manager.mark_finished(mjid, out.name, attempt=attempt)
        except StaleAttempt:
            out.unlink(missing_ok=True)
            raise
        return "finished"
    except (StaleAttempt, StaleRqJob) as exc:
        log.warning("%s: the job moved on without this worker; its result is dropped", exc)
        return "stale"
    finally:
        done()
