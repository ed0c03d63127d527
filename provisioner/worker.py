"""`invoke worker`: an rq render worker on this host, against the stack's Redis and Postgres.

The job function (renderfarm.work.render_job) runs in rq's work horse and reads RENDERFARM_* variables
at call time; this module sets them from renderdev's settings, so the host worker and the api container
agree on where everything is.

Stopping: SIGTERM or Ctrl+C (what a cloud VM's shutdown sends, or the preemption watcher raises) stops
Blender at once and puts the job on sq, recorded as preempted; then the worker exits. rq's HerokuWorker
does the signalling (the horse ignores SIGTERM and is told with SIGRTMIN); we make the notice immediate.

From the moment the worker takes a job off its queue until the job is done with, it holds a claim on it
(renderfarm.work.Claim): the orphan rescue never races a worker whose warm Blender is still starting.
"""

from __future__ import annotations

import gc
import json
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from provisioner.config import Settings
from provisioner.errors import ConfigError, RenderdevError
from provisioner.logs import worker_log_path
from provisioner.secrets import secret_path

if TYPE_CHECKING:
    from renderfarm.jobs import JobManager

QUEUES = ("pq", "sq")
log = logging.getLogger("renderdev.worker")
# AWS instance metadata (IMDSv2): a session token from PUT /latest/api/token, sent with every request.
AWS_TOKEN_PATH = "/latest/api/token"
AWS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
AWS_TOKEN_TTL = 21600  # seconds: the longest-lived token AWS gives


def worker_environment(settings: Settings) -> dict[str, str]:
    """RENDERFARM_* for the job function: the stack as seen from the host. Passwords stay in their files."""
    return {
        "RENDERFARM_REDIS_HOST": settings.bind_host,
        "RENDERFARM_REDIS_PORT": str(settings.redis_port),
        "RENDERFARM_REDIS_PASSWORD_FILE": str(secret_path(settings, "redis_password")),
        "RENDERFARM_DB_HOST": settings.bind_host,
        "RENDERFARM_DB_PORT": str(settings.db_port),
        "RENDERFARM_DB_USER": settings.db_user,
        "RENDERFARM_DB_NAME": settings.db_name,
        "RENDERFARM_DB_PASSWORD_FILE": str(secret_path(settings, "db_password")),
        "RENDERFARM_RENDERS_DIR": str(settings.renders_dir),
        "RENDERFARM_BLENDER": blender_command(settings),
        "RENDERFARM_HEARTBEAT_TTL": str(settings.heartbeat_ttl),
        "RENDERFARM_REAP_INTERVAL": str(settings.reap_interval),
        "RENDERFARM_MAX_LOST": str(settings.max_lost),
    }


def blender_command(settings: Settings) -> str:
    """The Blender `invoke setup` linked; plain `blender` from PATH when that link is not there."""
    link = settings.blender_link
    return str(link) if link.exists() else "blender"


def parse_queues(queues: list[str]) -> list[str]:
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        raise ConfigError(
            f"unknown queue(s): {', '.join(unknown) or '(none given)'}",
            hint="use --queues pq (preemptible), --queues sq (standard) or --queues pq,sq",
        )
    return list(dict.fromkeys(queues))


def worker_name(queues: list[str]) -> str:
    kinds: dict[tuple[str, ...], str] = {("pq",): "preemptible", ("sq",): "standard"}
    kind = kinds.get(tuple(queues), "render")
    return f"{socket.gethostname()}-{kind}-{os.getpid()}"


class _UtcFormatter(logging.Formatter):
    """ISO-8601 UTC times, the form `invoke logs` interleaves with the containers' (Docker's) timestamps."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")


def log_to_file(path: Path) -> None:
    """Everything the worker logs (rq's worker and job loggers, renderfarm's and ours) also goes to `path`, for
    `invoke logs`; the console keeps rq's own output. rq's console handlers are set up first, as rq would: once a
    logger has a handler, rq adds none of its own."""
    from rq.logutils import setup_loghandlers

    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.handlers.RotatingFileHandler(path, maxBytes=10_000_000, backupCount=2)
    to_file.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # what Python's last-resort handler printed before a root handler existed
    for name in ("rq.worker", "rq.job"):
        setup_loghandlers("INFO", name=name)
        logging.getLogger(name).addHandler(to_file)
    root = logging.getLogger()
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    root.addHandler(to_file)
    root.addHandler(console)


def preemption_notice(status: int, body: str) -> bool:
    """GCP's instance/preempted answers TRUE; AWS's spot/instance-action answers 200 with an action (404 before)."""
    if status != 200:
        return False
    text = body.strip()
    if text.upper() == "TRUE":
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("action"))


def send_sigterm_to_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class PreemptionWatcher(threading.Thread):
    """Polls the cloud metadata endpoint; on a notice, calls `on_notice` (default: SIGTERM to this process,
    the same drain as a VM's shutdown).

    The cloud is told by the URL. AWS (its path starts with /latest/): IMDSv2, which hosts may require (they
    answer a request without a token 401): a session token from `PUT /latest/api/token` is sent as
    X-aws-ec2-metadata-token, renewed before it expires and again whenever the endpoint answers 401; where
    the PUT is refused (an IMDSv1-only endpoint) the watcher polls without a token. GCP (any other URL): the
    `Metadata-Flavor: Google` header. Written here rather than borrowed from botocore's IMDS fetcher: two
    requests do not justify botocore, and it retries and times out on its own terms, not the poll's."""

    def __init__(
        self,
        url: str,
        poll: float,
        *,
        on_notice: Callable[[], None] = send_sigterm_to_self,
        token_ttl: int = AWS_TOKEN_TTL,
    ) -> None:
        super().__init__(name="preemption-watcher", daemon=True)
        self.url, self.poll = url, poll
        self.on_notice = on_notice
        self.token_ttl = token_ttl
        parts = urlsplit(url)
        self.aws = parts.path.startswith("/latest/")
        self.token_url = urlunsplit((parts.scheme, parts.netloc, AWS_TOKEN_PATH, "", ""))
        self.stopped = threading.Event()
        self.noticed = threading.Event()
        self._token: str | None = None
        self._renew_at = 0.0  # time.monotonic() after which the token is renewed before use
        self._refused = False

    def run(self) -> None:
        import httpx

        headers = {} if self.aws else {"Metadata-Flavor": "Google"}
        with httpx.Client(timeout=min(self.poll, 5.0), headers=headers) as http:
            while not self.stopped.is_set():
                try:
                    resp = self.check(http)
                    if preemption_notice(resp.status_code, resp.text):
                        log.warning("preemption notice from %s: draining", self.url)
                        self.noticed.set()
                        self.on_notice()
                        return
                    refused = resp.status_code in (401, 403)
                    if refused and not self._refused:  # said once, not at every poll
                        log.warning("preemption endpoint %s refuses the watcher (HTTP %s)", self.url, resp.status_code)
                    self._refused = refused
                except httpx.HTTPError as exc:
                    log.debug("preemption endpoint %s: %s", self.url, exc)
                self.stopped.wait(self.poll)

    def check(self, http: Any) -> Any:
        """One look at the endpoint (an httpx.Response); on AWS with the session token, renewed on a 401."""
        if not self.aws:
            return http.get(self.url)
        resp = http.get(self.url, headers=self._token_headers(http))
        if resp.status_code == 401:  # expired or revoked: a new token, and one more try
            resp = http.get(self.url, headers=self._token_headers(http, renew=True))
        return resp

    def _token_headers(self, http: Any, *, renew: bool = False) -> dict[str, str]:
        now = time.monotonic()
        if renew or self._token is None or now >= self._renew_at:
            resp = http.put(self.token_url, headers={AWS_TOKEN_TTL_HEADER: str(self.token_ttl)})
            if resp.status_code == 200 and resp.text.strip():
                self._token = resp.text.strip()
                # Renewed well before it expires: a tenth of its life early, at most a minute.
                self._renew_at = now + self.token_ttl - min(60.0, self.token_ttl / 10)
            else:
                log.debug("no IMDSv2 token from %s (HTTP %s): polling without one", self.token_url, resp.status_code)
                self._token, self._renew_at = None, now + self.poll
        return {AWS_TOKEN_HEADER: self._token} if self._token else {}

    def stop(self) -> None:
        self.stopped.set()


def _manager(settings: Settings) -> JobManager:
    from renderfarm.settings import Reliability, ServiceSettings
    from renderfarm.work import job_manager

    env = worker_environment(settings)
    return job_manager(ServiceSettings.from_env(env), Reliability.from_env(env))


def run_worker(settings: Settings, queues: list[str], *, burst: bool = False) -> None:
    """Serve the queues until stopped (or, with burst, until they are empty)."""
    from rq import Queue
    from rq.worker import HerokuWorker

    from renderfarm import horse_db, warm
    from renderfarm.jobs import JobManager
    from renderfarm.reaper import Reaper
    from renderfarm.settings import ServiceSettings
    from renderfarm.work import Claim, close

    warm_blender = warm.WarmBlender(blender_command(settings), max_jobs=settings.warm_max_jobs)
    lent: horse_db.LentDatabase | None = None

    class RenderWorker(HerokuWorker):
        imminent_shutdown_delay = 0  # the notice stops Blender and requeues the job at once

        def execute_job(self, job, queue):
            # Claimed first: the warm Blender may take long to start, and the orphan rescue must wait for it.
            mjid = job.args[0] if job.args and isinstance(job.args[0], str) else None
            claim = Claim(manager, mjid, job.id) if mjid is not None else None
            if claim is not None:
                claim.start()
            try:
                return super().execute_job(job, queue)
            finally:
                if claim is not None:
                    claim.stop()
                if lent is not None:
                    lent.after_horse()  # the horse has ended: a connection it did not leave clean goes now

        def fork_work_horse(self, job, queue):
            # The horse inherits the warm Blender: make sure it is alive (and not worn out) first.
            if settings.warm_blender:
                try:
                    warm_blender.ensure()
                    warm_blender.served += 1
                    warm.install(warm_blender)
                except Exception as exc:  # noqa: BLE001 - fall back to one Blender per job, and say so
                    log.warning("no warm Blender (%s): this job starts its own", exc)
                    warm.install(None)
            if lent is not None:
                lent.before_horse()
            # Objects that exist now are never collected in the horse: its garbage collector does not walk
            # (and so copy, page by page) the main process's whole heap.
            gc.freeze()
            return super().fork_work_horse(job, queue)

    names = parse_queues(queues)
    if not settings.secrets_file.exists():
        raise RenderdevError(
            f"no secrets for compose project {settings.project} ({settings.secrets_file} is missing)",
            hint="invoke setup",
        )
    if blender_command(settings) == "blender" and shutil.which("blender") is None:
        raise RenderdevError(
            f"no Blender: {settings.blender_link} is missing and none is on PATH", hint="invoke blender"
        )
    os.environ.update(worker_environment(settings))  # read by the job function in the work horse, at call time
    manager = _manager(settings)
    try:
        manager.redis.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis gets the same advice
        close(manager)
        raise RenderdevError(
            f"the stack's Redis at {settings.bind_host}:{settings.redis_port} does not answer ({exc})",
            hint="invoke services",
        ) from exc
    Path(settings.renders_dir).mkdir(parents=True, exist_ok=True)
    lent = horse_db.LentDatabase(ServiceSettings.from_env(worker_environment(settings)))
    try:
        lent.open(warm=lambda sessions: JobManager(manager.redis, sessions).warm_statements())
    except Exception as exc:  # noqa: BLE001 - not fatal: each job then connects on its own
        log.warning("no database connection to lend the work horses (%s): each job connects itself", exc)
    horse_db.install(lent)
    helpers: list[Reaper | PreemptionWatcher] = [Reaper(manager, settings.reap_interval)]
    if settings.preemption_url:
        helpers.append(PreemptionWatcher(settings.preemption_url, settings.preemption_poll))
    for h in helpers:
        h.start()
    try:
        name = worker_name(names)
        log_to_file(worker_log_path(settings, name))
        worker = RenderWorker([Queue(q, connection=manager.redis) for q in names], connection=manager.redis, name=name)
        worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
    finally:
        for h in helpers:
            h.stop()
        warm_blender.stop()
        lent.close()
        close(manager)
