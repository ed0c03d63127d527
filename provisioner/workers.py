"""`invoke workers`: render workers in containers on this host, the compose service `worker` (profile `workers`) of
the stack, scaled to N replicas; and the list of every render worker rq knows (host and container) for `invoke status`.

Plan, then act: the worker image and a running stack are checked first; the plan says how many containers start,
stop or are recreated (made from an older image or other settings: another --queues, other samples), then
`compose --profile workers up -d --no-deps --scale worker=N worker` applies it, and the task waits until rq lists
each new worker (or each stopped one is gone). A scale-down stops containers with SIGTERM: each worker stops its
Blender and puts the job in hand on sq at once (a preemption, never a loss). A re-run with the same N changes nothing.

The containers run as the image's own user (uid 10001) when renderdev runs as root, and as the host user otherwise,
so the images they write in the renders folder belong to that user; as root, the renders folder is made the
worker user's (the host's root workers and the api's reader are unaffected).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from provisioner import compose
from provisioner.config import Settings
from provisioner.dockerapi import PROJECT_LABEL, SERVICE_LABEL
from provisioner.errors import ConfigError, DockerError
from provisioner.images import find_image
from provisioner.plan import Outcome, Step, StepState, report, run_steps
from provisioner.secrets import MOUNTED_MODE, secret_path
from provisioner.worker import parse_queues
from provisioner.worker_access import plan_credential, stack_clients, stack_endpoints

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

MAX_REPLICAS = 32
CONTAINERS_CREDENTIAL = "containers"  # the worker credential every worker container of the stack holds
WORKER_SECRET = "worker_config"  # its worker file, mounted by compose at /run/secrets/worker_config
POLL = 0.25
STOP_TIMEOUT = 300.0  # compose stops the containers in parallel, each within its 30 s grace period
LOG_TAIL = 20
SAMPLE_VARIABLES = ("RENDERFARM_PREVIEW_SAMPLES", "RENDERFARM_HD_SAMPLES")  # read from this process's environment


def parse_replicas(raw: str | int | None) -> int:
    """--replicas as a whole number from 0 to MAX_REPLICAS; a ConfigError naming the value otherwise."""
    if raw is None:
        raise ConfigError("--replicas is required", hint="e.g. invoke workers --replicas 2 (0 stops them)")
    text = str(raw).strip()
    if not text.isdigit() or int(text) > MAX_REPLICAS:
        raise ConfigError(
            f"--replicas {raw!r} is not a whole number from 0 to {MAX_REPLICAS}",
            hint="e.g. invoke workers --replicas 2 (0 stops them)",
        )
    return int(text)


def worker_variables(settings: Settings, queues: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker service's own compose variables (compose.yaml): queues, user, warm Blender, render samples."""
    env = os.environ if environ is None else environ
    return {
        "RENDERDEV_WORKER_QUEUES": ",".join(queues),
        "RENDERDEV_WORKER_USER": compose.container_user(),
        "RENDERDEV_WARM_BLENDER": "true" if settings.warm_blender else "false",
        "RENDERDEV_WARM_MAX_JOBS": str(settings.warm_max_jobs),
        **{name: env.get(name, "").strip() for name in SAMPLE_VARIABLES},
        # A label of theirs, and so in their config hash: containers are recreated when the credential changes (a
        # secret is a bind mount of the file as it was at their start).
        "RENDERDEV_WORKER_FILE_DIGEST": _digest(secret_path(settings, WORKER_SECRET)),
    }


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def worker_containers(client: docker.DockerClient, project: str) -> list[Container]:
    """The project's worker containers (any state), found by their compose labels, by name."""
    found = client.containers.list(
        all=True,
        filters={"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={compose.WORKER_SERVICE}"]},
        ignore_removed=True,
    )
    return sorted(found, key=lambda c: str(c.name))


# ---------------------------------------------------------------- plan and act


def scale_workers(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    replicas: str | int | None,
    queues: str = "pq,sq",
    dry_run: bool = False,
) -> Outcome:
    """`invoke workers`: plan, show the plan, then (unless dry_run) scale the worker containers to `replicas`,
    building the worker image first when it is missing or out of date (the steps of `invoke images`)."""
    from provisioner.images import plan_images

    count, names = parse_replicas(replicas), parse_queues(_split(queues))
    outcome = Outcome()
    if count > 0:
        image_steps = plan_images(client, settings, console, only=(compose.WORKER_SERVICE,))
        outcome.merge(run_steps(console, image_steps, dry_run=dry_run, heading="Plan: worker image"))
    if count == 0:
        steps = plan_workers(client, settings, count, names)
        outcome.merge(run_steps(console, steps, dry_run=dry_run, heading="Plan: workers"))
    else:
        require_stack(client, settings)
        with stack_clients(settings) as (r, sessions):
            # The containers' one worker credential: a token and a Redis user, no database password.
            credential = plan_credential(
                settings,
                r,
                sessions,
                name=CONTAINERS_CREDENTIAL,
                path=secret_path(settings, WORKER_SECRET),
                endpoints=stack_endpoints(),
                mode=MOUNTED_MODE,
            )
            steps = [credential, *plan_workers(client, settings, count, names, new_credential=credential.needed)]
            outcome.merge(run_steps(console, steps, dry_run=dry_run, heading="Plan: workers"))
    report(console, outcome, dry_run=dry_run)
    return outcome


def _split(queues: str) -> list[str]:
    return [q.strip() for q in queues.split(",") if q.strip()]


def require_stack(client: docker.DockerClient, settings: Settings) -> None:
    """DockerError naming each service that is not up: workers need the stack's redis and api (and its db)."""
    from provisioner.services import running_mode, service_states

    running = running_mode(client, settings)
    down = [f"{s.service}: {s.describe()}" for s in service_states(client, running) if not s.ready]
    if down:
        raise DockerError(
            f"the stack of compose project {settings.project} is not up ({'; '.join(down)}): workers need its"
            " redis, db and api",
            hint="invoke services, then re-run: invoke workers --replicas N",
        )


def plan_workers(
    client: docker.DockerClient, settings: Settings, replicas: int, queues: list[str], *, new_credential: bool = False
) -> list[Step]:
    """The worker containers: "ok" or what would change. `new_credential`: their worker file is about to change,
    so every running one is recreated (a secret is mounted as the file was when the container started)."""
    from provisioner.services import running_mode

    running = running_mode(client, settings)  # a live api's settings: the workers join the stack as it runs
    image = find_image(client, settings.image(compose.WORKER_SERVICE))
    if replicas > 0:  # the worker image was planned (and, unless a dry run, built) just before
        require_stack(client, settings)
    image_id = image.id if image else None
    return [_plan_containers(client, running, replicas, queues, image_id, new_credential=new_credential)]


def _plan_containers(
    client: docker.DockerClient,
    settings: Settings,
    replicas: int,
    queues: list[str],
    image_id: str | None,
    *,
    new_credential: bool = False,
) -> Step:
    title = f"worker containers of project {settings.project} ({','.join(queues)})"
    wanted = compose.compose_env(settings, worker_variables(settings, queues))[compose.CONFIG_HASH_VAR]
    found = worker_containers(client, settings.project)
    current = [
        c
        for c in found
        if c.attrs.get("Image") == image_id and c.labels.get(compose.CONFIG_HASH_LABEL) == wanted and not new_credential
    ]
    up = [c for c in current if c.status == "running"]
    if len(found) == replicas and len(up) == replicas:
        names = ", ".join(str(c.name) for c in up)
        return Step("workers", title, StepState.OK, f"{replicas} running" + (f": {names}" if names else ""))
    outdated = [c for c in found if c not in current][: max(0, min(replicas, len(found)))]
    changes = []
    if len(found) > replicas:
        changes.append(f"stop {len(found) - replicas} (SIGTERM: a job in hand goes back on sq, as a preemption)")
    if outdated:
        changes.append(
            f"recreate {len(outdated)} made from an older image or other settings (their jobs go back on sq)"
        )
    start = replicas - len(found)
    if start > 0:
        changes.append(f"start {start} from {settings.image(compose.WORKER_SERVICE)}")
    stopped = [c for c in current if c.status != "running"][:replicas]
    if stopped:
        changes.append(f"start {len(stopped)} stopped one(s) again")
    detail = f"{len(up)} of {len(found)} running now; " + "; ".join(changes)

    def apply() -> str:
        # The variables as they are now: the worker file (in them by its digest) may have just been made.
        return scale(client, settings, replicas, worker_variables(settings, queues), recreate=bool(outdated))

    return Step("workers", title, StepState.CHANGE, detail, apply)


def scale(
    client: docker.DockerClient, settings: Settings, replicas: int, variables: dict[str, str], *, recreate: bool
) -> str:
    """compose up the worker service at `replicas`, then wait until rq lists each worker (or each stopped one is
    gone). Only the worker service is touched (--no-deps); kept containers are recreated only with `recreate`."""
    started = time.monotonic()
    args = ["--profile", compose.WORKERS_PROFILE, "up", "-d", "--no-deps", "--no-build"]
    args += [] if recreate else ["--no-recreate"]
    args += ["--scale", f"{compose.WORKER_SERVICE}={replicas}", compose.WORKER_SERVICE]
    compose.run_compose(settings, *args, extra_env=variables, timeout=max(STOP_TIMEOUT, settings.health_timeout))
    if replicas == 0:
        left = [str(c.name) for c in worker_containers(client, settings.project)]
        if left:
            raise DockerError(
                f"compose left worker containers of project {settings.project}: {', '.join(left)}",
                hint=f"remove them: docker rm -f {' '.join(left)}",
            )
        return f"no worker containers left after {time.monotonic() - started:.1f} s"
    names = wait_registered(client, settings, replicas, started + settings.health_timeout)
    return f"{replicas} running, each listed by rq, after {time.monotonic() - started:.1f} s: {', '.join(names)}"


def wait_registered(client: docker.DockerClient, settings: Settings, replicas: int, deadline: float) -> list[str]:
    """Until rq lists a worker in each of the project's `replicas` running worker containers; a container that
    exits, or the deadline, raises DockerError with its log's tail."""
    import redis
    from rq import Worker

    from provisioner.services import redis_url

    with redis.Redis.from_url(redis_url(settings), socket_timeout=10) as r:
        while True:
            found = worker_containers(client, settings.project)
            for c in found:
                if c.status in ("exited", "dead") or int(c.attrs.get("RestartCount") or 0) > 0:
                    raise _failed(c, f"{c.status} (restarted {c.attrs.get('RestartCount') or 0} times)")
            hosts = {str(w.hostname) for w in Worker.all(connection=r)}
            listed = [c for c in found if c.status == "running" and _hostname(c) in hosts]
            if len(listed) >= replicas:
                return [str(c.name) for c in listed]
            if time.monotonic() >= deadline:
                missing = [c for c in found if c not in listed]
                raise _failed(
                    missing[0] if missing else None, f"not listed by rq after {settings.health_timeout:.0f} s"
                )
            time.sleep(POLL)


def _hostname(c: Container) -> str:
    return str((c.attrs.get("Config") or {}).get("Hostname") or "")


def _failed(c: Container | None, what: str) -> DockerError:
    if c is None:
        return DockerError(f"worker containers: {what}", hint="docker ps -a; then re-run: invoke workers --replicas N")
    lines = [f"worker container {c.name} is {what}"]
    try:
        tail = c.logs(tail=LOG_TAIL).decode(errors="replace").rstrip()
    except Exception as exc:  # noqa: BLE001 - the log is a courtesy: never hide the real error
        tail = f"(could not read the log: {exc})"
    lines += [f"  | {line}" for line in tail.splitlines()]
    return DockerError("\n".join(lines), hint=f"read the whole log: docker logs {c.name}; then: invoke workers")


# ---------------------------------------------------------------- every render worker, for `invoke status`


@dataclass(frozen=True)
class WorkerRow:
    """One render worker as rq lists it in the stack's Redis."""

    name: str
    where: str  # "host pid 1234", "container rdwt11-worker-1", or "<hostname> pid N" (another machine)
    queues: str
    state: str  # rq's: idle, busy, suspended...
    job: str | None  # the mjid it renders
    heartbeat_age: float | None  # seconds since its last heartbeat

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_workers(client: docker.DockerClient | None, settings: Settings) -> list[WorkerRow]:
    """Every render worker rq knows in the stack's Redis (Worker.all), host and container, by name."""
    import redis
    from rq import Worker

    from provisioner.services import redis_url

    containers = {_hostname(c): str(c.name) for c in worker_containers(client, settings.project)} if client else {}
    here = socket.gethostname()
    now = datetime.now(UTC)
    rows = []
    with redis.Redis.from_url(redis_url(settings), socket_timeout=5, socket_connect_timeout=5) as r:
        for w in Worker.all(connection=r):
            host = str(w.hostname or "")
            if host in containers:
                where = f"container {containers[host]}"
            elif host == here:
                where = f"host pid {w.pid}"
            else:
                where = f"{host} pid {w.pid}"
            job = w.get_current_job()
            mjid = job.args[0] if job is not None and job.args and isinstance(job.args[0], str) else None
            beat = w.last_heartbeat
            if beat is not None and beat.tzinfo is None:
                beat = beat.replace(tzinfo=UTC)
            rows.append(
                WorkerRow(
                    name=str(w.name),
                    where=where,
                    queues=",".join(w.queue_names()),
                    state=str(w.get_state()),
                    job=mjid if mjid is not None else (job.id if job is not None else None),
                    heartbeat_age=round((now - beat).total_seconds(), 1) if beat is not None else None,
                )
            )
    return sorted(rows, key=lambda row: row.name)
