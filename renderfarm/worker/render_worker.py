"""The render worker: an rq worker (HerokuWorker) that serves pq and sq with the render job
(renderfarm.worker.job), and `serve()`, which runs one until it is stopped.

What it holds, and hands to each work horse it forks (the job finds it with `current_worker()`):
- its settings (renderfarm.settings.FarmSettings), given as an object by whoever starts it;
- its warm Blender (renderfarm.worker.warm_blender), made sure to be alive before each fork;
- one database connection lent to its horses in turn (renderfarm.worker.lent_database);
- a claim on each job from the moment it takes it off its queue (renderfarm.worker.liveness.Claim): the orphan
  rescue never races a worker whose warm Blender is still starting.
Beside it run the reaper (renderfarm.reaper) and, on a cloud VM, the preemption watcher
(renderfarm.worker.preemption).

Stopping: SIGTERM or Ctrl+C (what a cloud VM's shutdown sends, or the preemption watcher raises) stops
Blender at once and puts the job on sq, recorded as preempted; then the worker exits. rq's HerokuWorker
does the signalling (the horse ignores SIGTERM and is told with SIGRTMIN); we make the notice immediate.
Draining: DRAIN_SIGNAL (SIGUSR1, what `invoke worker --reload` sends on a code change) lets the job in hand
finish, then the worker exits: rq's own warm shutdown, without HerokuWorker's stop of the horse.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

from redis.exceptions import AuthenticationError
from rq import Queue
from rq.utils import now
from rq.worker import HerokuWorker

from renderfarm.clients import make_worker_redis
from renderfarm.errors import CredentialRefused, RenderfarmError, ServiceUnavailable
from renderfarm.jobs import RENDER_FUNC, JobManager
from renderfarm.keys import QueueName
from renderfarm.reaper import Reaper
from renderfarm.settings import FarmSettings
from renderfarm.worker.farm_link import ApiLink, FarmLink, ManagerLink
from renderfarm.worker.lent_database import LentDatabase
from renderfarm.worker.liveness import Claim
from renderfarm.worker.own_manager import close_manager, open_manager
from renderfarm.worker.preemption import PreemptionWatcher
from renderfarm.worker.warm_blender import WarmBlender

log = logging.getLogger("renderfarm.worker.render_worker")
DRAIN_SIGNAL = signal.SIGUSR1  # finish the job in hand, then stop (invoke worker --reload)


class RenderWorker(HerokuWorker):
    imminent_shutdown_delay = 0  # the notice stops Blender and requeues the job at once

    def __init__(
        self,
        *args: Any,
        settings: FarmSettings | None = None,
        link: FarmLink | None = None,
        warm_blender: WarmBlender | None = None,
        lent: LentDatabase | None = None,
        **kwargs: Any,
    ) -> None:
        """rq's arguments, and what the worker lends its horses (all optional: rq makes workers of this class
        from Redis, e.g. Worker.all, with rq's arguments alone)."""
        super().__init__(*args, **kwargs)
        self.settings = settings if settings is not None else FarmSettings()
        self.link = link  # the main process's own: the claims
        self.warm_blender = warm_blender
        self.lent = lent
        self._warm_for_job: WarmBlender | None = None
        self.refused: CredentialRefused | None = None  # the API refused the credential: the worker stopped

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(DRAIN_SIGNAL, self.request_drain)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        signal.signal(DRAIN_SIGNAL, signal.SIG_IGN)  # a drain never reaches the render: the job finishes

    def request_drain(self, signum: int, frame: Any) -> None:
        """Stop after the job in hand (at once when idle): rq's warm shutdown (`_shutdown`: the loop ends after
        the current horse, or StopRequested when there is none), without the SIGRTMIN that HerokuWorker's
        request_stop sends the horse. Ctrl+C or SIGTERM during a drain still stop the render as usual."""
        log.info("worker %s: drain requested: finishing the job in hand, then stopping", self.name)
        self._shutdown_requested_date = now()
        self._shutdown()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> Any:
        """rq's heartbeat, the first Redis call of each turn of its loop. rq retries a lost connection forever
        (an AuthenticationError is a ConnectionError to it), which is right for a Redis restart and wrong for a
        revoked worker user: Redis closes the user's connections, and the reconnection's AUTH is refused. That stops
        the worker here, with the refusal in `refused` (serve raises it), instead of retrying an AUTH that will
        never pass."""
        try:
            return super().heartbeat(timeout, pipeline)
        except AuthenticationError as exc:
            refused = self._refusal(exc)
            if refused is None:
                raise
            if self.horse_pid:
                self.kill_horse()  # its uploads would be refused too; the reaper finds its job lost
            raise refused from exc

    def _refusal(self, exc: AuthenticationError) -> CredentialRefused | None:
        """The refusal of this worker's credential, kept in `refused` (None: a stack's own worker, whose refused
        password is not a revocation)."""
        access = self.settings.access
        if access is None:
            return None
        if self.refused is None:
            self.refused = CredentialRefused(
                f"the stack's Redis at {access.redis_host}:{access.redis_port} refuses worker credential"
                f" {access.name!r} ({exc})"
            )
            log.error("worker %s stops: %s", self.name, self.refused)
        return self.refused

    def warm_for_job(self) -> WarmBlender | None:
        """In a work horse: the warm Blender made ready for this job, if it is alive."""
        warm = self._warm_for_job
        return warm if warm is not None and warm.alive() else None

    def work(self, *args: Any, **kwargs: Any) -> bool:
        global _current
        _current = self
        # The render job's module, imported here once: every work horse forked from this process then has it,
        # instead of importing it for its job (milliseconds of every job).
        importlib.import_module(RENDER_FUNC.rpartition(".")[0])
        try:
            return bool(super().work(*args, **kwargs))
        except AuthenticationError as exc:
            # A refused AUTH can surface from any of rq's calls, not only the heartbeat: its loop then quits and
            # its teardown (register_death) meets the same refusal. Either way the worker stops, naming it.
            if self._refusal(exc) is None:
                raise
            return False
        finally:
            _current = None

    def execute_job(self, job: Any, queue: Any) -> Any:
        # Claimed first: the warm Blender may take long to start, and the orphan rescue must wait for it.
        mjid = job.args[0] if job.args and isinstance(job.args[0], str) else None
        claim = Claim(self.link, mjid, job.id) if mjid is not None and self.link is not None else None
        if claim is not None:
            claim.start()
            if claim.refused is not None:
                # The credential was revoked (or replaced): take no job any more. This rq job fails here; the job
                # itself stays queued in the ledger, unclaimed, and the orphan rescue puts it on its queue again.
                log.error("worker %s stops: %s", self.name, claim.refused)
                self.refused = claim.refused
                self.handle_job_failure(job, queue, exc_string=str(claim.refused))
                self._shutdown()
                return None
        try:
            return super().execute_job(job, queue)
        finally:
            if claim is not None:
                claim.stop()
            if self.lent is not None:
                self.lent.after_horse()  # the horse has ended: a connection it did not leave clean goes now

    def fork_work_horse(self, job: Any, queue: Any) -> Any:
        # The horse inherits the warm Blender: make sure it is alive (and not worn out) first.
        self._warm_for_job = None
        if self.warm_blender is not None:
            try:
                self.warm_blender.ensure()
                self.warm_blender.served += 1
                self._warm_for_job = self.warm_blender
            except Exception as exc:  # noqa: BLE001 - fall back to one Blender per job, and say so
                log.warning("no warm Blender (%s): this job starts its own", exc)
        if self.lent is not None:
            self.lent.before_horse()
        # Objects that exist now are never collected in the horse: its garbage collector does not walk
        # (and so copy, page by page) the main process's whole heap.
        gc.freeze()
        return super().fork_work_horse(job, queue)


def worker_name(queues: Sequence[str]) -> str:
    """The rq name of a worker of this process: `<host>-<kind>-<pid>`, kind preemptible (pq), standard (sq) or
    render (both). In a container the host is the container's hostname (its short id)."""
    kinds: dict[tuple[str, ...], str] = {(QueueName.PREEMPTIBLE,): "preemptible", (QueueName.STANDARD,): "standard"}
    kind = kinds.get(tuple(queues), "render")
    return f"{socket.gethostname()}-{kind}-{os.getpid()}"


# The RenderWorker working in this process. A module-level slot because rq calls the job function by name with
# only the mjid: the worker's main process sets it while it works, and each forked work horse inherits it.
_current: RenderWorker | None = None


def current_worker() -> RenderWorker | None:
    return _current


def serve(
    settings: FarmSettings,
    queues: Sequence[str],
    *,
    name: str,
    burst: bool = False,
    warm_blender: WarmBlender | None = None,
    preemption: PreemptionWatcher | None = None,
) -> None:
    """Serve the queues (in that order) until stopped (or, with burst, until they are empty): a RenderWorker
    with its warm Blender (None: one Blender process per job) and, on a cloud VM, the preemption watcher.

    With a worker file (settings.access) it reaches the stack only through the API and its own Redis user (rq's
    keys): no database, no reaper (the API runs one). Else it is the stack's own host worker: the JobManager on the
    stack's Redis, a database connection lent to its horses, and a reaper beside the API's. ServiceUnavailable when
    Redis does not answer; Postgres away is not fatal (each job then connects on its own)."""
    if settings.access is not None:
        redis = make_worker_redis(settings.access)
        where = f"{settings.access.redis_host}:{settings.access.redis_port} as {settings.access.redis_user}"
    else:
        manager = open_manager(settings)
        redis = manager.redis
        where = f"{settings.service.redis_host}:{settings.service.redis_port}"
    try:
        redis.ping()
    except AuthenticationError as exc:
        redis.close()
        if settings.access is None:
            raise ServiceUnavailable(f"Redis at {where} refuses the stack's password ({exc})") from exc
        raise CredentialRefused(
            f"the stack's Redis at {where} refuses worker credential {settings.access.name!r} ({exc})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any other failure to reach Redis is the same: it does not answer
        redis.close()
        raise ServiceUnavailable(f"Redis at {where} does not answer ({exc})") from exc
    link: FarmLink
    lent: LentDatabase | None = None
    helpers: list[Reaper | PreemptionWatcher] = []
    if settings.access is not None:
        api_link = ApiLink(settings.access)
        try:
            api_link.check()  # a wrong or revoked worker file stops the worker here, before it takes any job
        except RenderfarmError:
            api_link.close()
            redis.close()
            raise
        link = api_link
    else:
        link = ManagerLink(manager, settings.renders_dir, close=lambda: close_manager(manager))
        settings.renders_dir.mkdir(parents=True, exist_ok=True)
        lent = LentDatabase(settings.service)
        try:
            lent.open(warm=lambda sessions: JobManager(manager.redis, sessions).warm_statements())
        except Exception as exc:  # noqa: BLE001 - not fatal: each job then connects on its own
            log.warning("no database connection to lend the work horses (%s): each job connects itself", exc)
        helpers.append(Reaper(manager, settings.reliability.reap_interval))
    if preemption is not None:
        helpers.append(preemption)
    for h in helpers:
        h.start()
    try:
        worker = RenderWorker(
            [Queue(q, connection=redis) for q in queues],
            connection=redis,
            name=name,
            settings=settings,
            link=link,
            warm_blender=warm_blender,
            lent=lent,
        )
        worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
        if worker.refused is not None:
            raise worker.refused
    finally:
        for h in helpers:
            h.stop()
        if warm_blender is not None:
            warm_blender.stop()
        if lent is not None:
            lent.close()
        link.close()
        redis.close()
