"""`invoke worker`: a render worker on this host, against the stack's Redis and Postgres.

This module checks the host (the stack's secrets, a Blender), names the worker, sends its log to the project's
state folder (for `invoke logs`) and starts it (renderfarm.worker.render_worker.serve) with renderfarm's settings
made from renderdev's (`farm_settings`), so the host worker and the api container agree on where everything is.

A host worker runs the working tree's renderfarm/ as it was when it started. With `--reload` (`reload_worker`)
this process only watches that folder (settings.live_source) and runs the worker as a child `invoke worker`: on
a saved change the child drains (renderfarm.worker.render_worker.DRAIN_SIGNAL: the job in hand finishes, never
requeued) and a new one starts on the new code.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.config import REPO_ROOT, Settings
from provisioner.errors import ConfigError, RenderdevError
from provisioner.logs import worker_log_path
from provisioner.secrets import secret_path
from renderfarm.keys import QueueName

if TYPE_CHECKING:
    from rich.console import Console

    from renderfarm.settings import FarmSettings

QUEUES = tuple(QueueName)


def farm_settings(settings: Settings) -> FarmSettings:
    """The render system's settings for a worker on this host: the stack as seen from the host (passwords stay in
    their files), renderdev's timings, renders folder and Blender; the rest (the render samples) from the
    RENDERFARM_* environment, as any renderfarm process reads it."""
    from renderfarm.settings import FarmSettings, Reliability, ServiceSettings

    return replace(
        FarmSettings.from_env(),
        service=ServiceSettings(
            redis_host=settings.bind_host,
            redis_port=settings.redis_port,
            redis_password_file=secret_path(settings, "redis_password"),
            db_host=settings.bind_host,
            db_port=settings.db_port,
            db_user=settings.db_user,
            db_name=settings.db_name,
            db_password_file=secret_path(settings, "db_password"),
        ),
        reliability=Reliability(
            heartbeat_ttl=settings.heartbeat_ttl, reap_interval=settings.reap_interval, max_lost=settings.max_lost
        ),
        hd_price=settings.hd_price,
        renders_dir=settings.renders_dir,
        blender_path=blender_path(settings),
    )


def blender_path(settings: Settings) -> str:
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


def run_worker(settings: Settings, queues: list[str], *, burst: bool = False, config: Path | None = None) -> None:
    """Check this host (the stack's secrets, or the worker file `config`; a Blender), then serve the queues until
    stopped (or, with burst, until they are empty). With `config` (made by `invoke worker-config`) the worker
    reaches the stack only through its API and its own Redis user: this host needs no stack of its own."""
    from renderfarm.errors import CredentialRefused, RenderfarmError, ServiceUnavailable
    from renderfarm.settings import FarmSettings, WorkerAccess
    from renderfarm.worker.preemption import PreemptionWatcher
    from renderfarm.worker.render_worker import serve, worker_name
    from renderfarm.worker.warm_blender import WarmBlender

    names = parse_queues(queues)
    if config is None and not settings.secrets_file.exists():
        raise RenderdevError(
            f"no secrets for compose project {settings.project} ({settings.secrets_file} is missing)",
            hint="invoke setup (or, for a stack on another host, invoke worker --config FILE)",
        )
    try:
        if config is None:
            farm = farm_settings(settings)
        else:
            farm = replace(
                FarmSettings.from_env(), access=WorkerAccess.from_file(config), blender_path=blender_path(settings)
            )
    except RenderfarmError as exc:  # a RENDERFARM_* variable, or the worker file, with a value we cannot use
        raise RenderdevError(str(exc), hint="correct or unset that variable, or make the worker file again") from exc
    if farm.blender_path == "blender" and shutil.which("blender") is None:
        raise RenderdevError(
            f"no Blender: {settings.blender_link} is missing and none is on PATH", hint="invoke blender"
        )
    name = worker_name(names)
    log_to_file(worker_log_path(settings, name))
    warm = WarmBlender(farm.blender_path, max_jobs=settings.warm_max_jobs) if settings.warm_blender else None
    watcher = PreemptionWatcher(settings.preemption_url, settings.preemption_poll) if settings.preemption_url else None
    try:
        serve(farm, names, name=name, burst=burst, warm_blender=warm, preemption=watcher)
    except ServiceUnavailable as exc:
        hint = "invoke services" if config is None else f"check that the stack in {config} is up and reachable"
        raise RenderdevError(f"the stack's {exc}", hint=hint) from exc
    except CredentialRefused as exc:
        raise RenderdevError(str(exc), hint="on the stack's host: invoke worker-config --name NAME --rotate") from exc


def reload_worker(settings: Settings, queues: list[str], console: Console) -> None:
    """Run `invoke worker` for the queues as a child, and start a new one whenever a .py file under
    settings.live_source changes, after the old one has finished its job in hand. Ctrl+C (which the terminal
    sends the child too) or SIGTERM (forwarded) stop it as they stop a worker without --reload.

    Written here rather than with watchfiles.run_process: that stops its child with SIGINT, which for a render
    worker means stop the render and requeue the job; a reload waits for the job instead."""
    import watchfiles

    from renderfarm.worker.render_worker import DRAIN_SIGNAL

    names = parse_queues(queues)
    watched = settings.live_source
    if not watched.is_dir():
        raise ConfigError(
            f"nothing to watch for --reload: {watched} is not a folder",
            hint="set live_source (RENDERDEV_LIVE_SOURCE) to the working tree's renderfarm/, or drop --reload",
        )
    argv = [sys.executable, "-m", "invoke", "worker", "--queues", ",".join(names)]
    env = {**os.environ, **settings.as_environment()}
    stop = threading.Event()
    current: list[subprocess.Popen[bytes]] = []

    def on_sigterm(signum: int, frame: object) -> None:
        # SIGTERM came to us alone (Ctrl+C reaches the child from the terminal): pass it on at once, even while
        # a drain is awaited, so the worker stops as `invoke worker` does on SIGTERM.
        stop.set()
        if current and current[-1].poll() is None:
            current[-1].send_signal(signal.SIGTERM)

    def start() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, cwd=REPO_ROOT, env=env)
        current.append(child)
        console.print(f"worker --reload: worker process {child.pid} started; watching {watched} for .py changes")
        return child

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    child = start()
    try:
        changes_seen = watchfiles.watch(
            watched,
            watch_filter=watchfiles.PythonFilter(),
            stop_event=stop,
            rust_timeout=500,
            yield_on_timeout=True,
        )
        for changes in changes_seen:
            if stop.is_set():
                break
            code = child.poll()
            if code is not None:
                raise RenderdevError(
                    f"the render worker (process {child.pid}) exited by itself with code {code}",
                    hint="see its output above, then run `invoke worker --reload` again",
                )
            if not changes:
                continue
            changed = sorted({Path(path).name for _, path in changes})
            console.print(
                f"worker --reload: {', '.join(changed)} changed: process {child.pid} finishes its job in hand, then"
                " a new worker starts"
            )
            child.send_signal(DRAIN_SIGNAL)
            child.wait()
            if stop.is_set():
                break
            child = start()
            if stop.is_set():  # SIGTERM came while it was being started: it has not been told
                child.send_signal(signal.SIGTERM)
    except KeyboardInterrupt:
        # Ctrl+C: the terminal told the child too; pass it on in case it was sent to us alone (rq ignores the
        # same signal twice within a second, so the job is requeued once either way).
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    finally:
        child.wait()  # stopped by the terminal's Ctrl+C or our SIGTERM: its job is requeued, as without --reload
        signal.signal(signal.SIGTERM, previous)
