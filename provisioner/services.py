"""The running stack: secrets, then `compose up`, then a wait for health through the Docker API.

The stack is "ok" when each service's container (found by its compose labels) is running, healthy,
and made from the image that `invoke images` last built. Readiness is polled here, with a deadline,
rather than with `up --wait` (Compose v1 has none); a container that exits, turns unhealthy or does
not become healthy in time is reported with its state and the tail of its log.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import compose
from provisioner.config import SERVICES, Settings
from provisioner.dockerapi import PROJECT_LABEL, project_containers, service_container, service_containers
from provisioner.errors import ConfigError, DockerError
from provisioner.fsops import atomic_write_text
from provisioner.images import find_image
from provisioner.plan import Check, Step, StepState
from provisioner.ports import free_port, port_taken
from provisioner.secrets import plan_secrets, read_secrets, stale_mounts

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

POLL_SECONDS = 0.5
LOG_TAIL = 20
MAX_RESTARTS = 2  # a container restarted more often than this while we wait is crash-looping
VOLUME_LABEL = "com.docker.compose.volume"
DB_VOLUME = "dbdata"  # as named in compose.yaml
FIX = "invoke services"


# ---------------------------------------------------------------- connection info


def redis_url(settings: Settings) -> str:
    """redis://:<password>@127.0.0.1:<port>/0 for the stack's Redis (password from the secrets file)."""
    password = read_secrets(settings)["redis_password"]
    return f"redis://:{password}@{settings.bind_host}:{settings.redis_port}/0"


def db_url(settings: Settings) -> str:
    """SQLAlchemy URL (psycopg 3) for the stack's database, as seen from the host."""
    from sqlalchemy.engine import URL  # imported here: setup and status never need SQLAlchemy

    url = URL.create(
        "postgresql+psycopg",
        username=settings.db_user,
        password=read_secrets(settings)["db_password"],
        host=settings.bind_host,
        port=settings.db_port,
        database=settings.db_name,
    )
    return url.render_as_string(hide_password=False)


def api_url(settings: Settings) -> str:
    return f"http://{settings.bind_host}:{settings.api_port}"


def stack_urls(settings: Settings) -> dict[str, str]:
    """The stack's addresses a person opens: the page (the API's root), the API's docs, its schema."""
    base = api_url(settings)
    return {"page": f"{base}/", "api": f"{base}/", "docs": f"{base}/docs", "openapi": f"{base}/openapi.json"}


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class ServiceState:
    service: str
    container: str | None  # container name; None when there is none
    status: str  # Docker's State.Status, or "missing"
    health: str | None  # "starting", "healthy", "unhealthy"; None without a healthcheck
    current_image: bool  # made from the image the tag names now
    current_config: bool = True  # made from today's compose.yaml and settings

    @property
    def ready(self) -> bool:
        return self.status == "running" and self.health in ("healthy", None)

    @property
    def ok(self) -> bool:
        return self.ready and self.current_image and self.current_config

    def describe(self) -> str:
        if self.container is None:
            return "no container"
        text = self.status if self.health is None else f"{self.status}, {self.health}"
        if not self.current_image:
            text += ", made from an older image"
        if not self.current_config:
            text += ", made from an older compose file or settings"
        return f"{text} ({self.container})"


def _state_of(container: Container) -> dict[str, Any]:
    return dict(container.attrs.get("State") or {})


def plan_renders_folder(settings: Settings) -> Step:
    """The renders folder, there and owned by the containers' user (compose.container_user: the host user's, or
    uid 10001 for root): the api container writes the images workers upload there, and serves them with those host
    workers write (root writes anywhere)."""
    folder = settings.renders_dir
    title = f"renders folder {folder}"
    uid = compose.CONTAINER_UID if os.getuid() == 0 else os.getuid()
    try:
        owner: int | None = folder.stat().st_uid
    except OSError:
        owner = None
    if owner == uid:
        return Step("services", title, StepState.OK, f"writable by the api container's user (uid {uid})")
    now = "missing" if owner is None else f"owned by uid {owner}"
    return Step(
        "services",
        title,
        StepState.CHANGE,
        f"{now}: make it the api container's user's (uid {uid})",
        lambda: ensure_renders_folder(settings),
    )


def ensure_renders_folder(settings: Settings) -> str:
    """Make the renders folder (0755) and, as root, give it to the containers' user. Returns what it did."""
    folder = settings.renders_dir
    folder.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(folder, compose.CONTAINER_UID, compose.CONTAINER_UID)
        folder.chmod(0o755)
        return f"{folder} owned by uid {compose.CONTAINER_UID}"
    return f"{folder} made"


def stack_services(settings: Settings) -> tuple[str, ...]:
    """The services `invoke services` runs and waits for: redis, db and api, and api-tls when exposed."""
    from provisioner.exposure import TLS_SERVICE

    return (*SERVICES, TLS_SERVICE) if settings.exposed_address else SERVICES


def _image_of(service: str) -> str:
    """The image a service runs (api-tls is the api image)."""
    from provisioner.exposure import TLS_SERVICE

    return "api" if service == TLS_SERVICE else service


def service_state(client: docker.DockerClient, settings: Settings, service: str) -> ServiceState:
    c = service_container(client, settings.project, service)
    return _service_state(client, settings, service, c, compose.compose_env(settings)[compose.CONFIG_HASH_VAR])


def _service_state(
    client: docker.DockerClient, settings: Settings, service: str, c: Container | None, wanted_config: str
) -> ServiceState:
    if c is None:
        return ServiceState(service, None, "missing", None, False)
    state = _state_of(c)
    image = find_image(client, settings.image(_image_of(service)))
    return ServiceState(
        service=service,
        container=c.name,
        status=str(state.get("Status", "unknown")),
        health=(state.get("Health") or {}).get("Status"),
        current_image=image is not None and c.attrs.get("Image") == image.id,
        current_config=c.labels.get(compose.CONFIG_HASH_LABEL) == wanted_config,
    )


def service_states(client: docker.DockerClient, settings: Settings) -> list[ServiceState]:
    """Each service's state, as service_state finds it, from one listing of the project's containers (and the
    compose config hash worked out once: it depends on the settings and the compose files only)."""
    services = stack_services(settings)
    containers = service_containers(client, settings.project, services)
    wanted_config = compose.compose_env(settings)[compose.CONFIG_HASH_VAR]
    return [_service_state(client, settings, svc, containers.get(svc), wanted_config) for svc in services]


# ---------------------------------------------------------------- plan


def plan_services(client: docker.DockerClient, settings: Settings) -> list[Step]:
    """The secrets step, then the stack step ("ok" when all three containers are current and healthy)."""
    secrets_step = plan_secrets(settings)
    folder_steps = [plan_renders_folder(settings)]
    if secrets_step.needed and not settings.secrets_file.exists():
        _refuse_orphaned_db_volume(client, settings)
    states = service_states(client, settings)
    title = f"compose project {settings.project}"
    # Secret files are bind mounts of one inode: after rewriting them, existing containers need recreating.
    recreate = bool(stale_mounts(settings)) and any(s.container for s in states)
    if not recreate and all(s.ok for s in states):
        ready = Step("services", title, StepState.OK, f"{', '.join(stack_services(settings))} running and healthy")
        return [secrets_step, *folder_steps, ready]
    _refuse_ports_in_use(client, settings)
    wrong = [f"{s.service}: {s.describe()}" for s in states if not s.ok]
    detail = "compose up, then wait for health"
    if recreate:
        detail += " (recreating containers for the new secret files)"
    if wrong:
        detail += "; now " + "; ".join(wrong)
    return [
        secrets_step,
        *folder_steps,
        Step(
            "services",
            title,
            StepState.CHANGE,
            detail,
            apply=lambda: bring_up(client, settings, force_recreate=recreate),
        ),
    ]


def _refuse_orphaned_db_volume(client: docker.DockerClient, settings: Settings) -> None:
    """New passwords cannot open a database initialised with old ones: say so instead of failing later."""
    volumes = client.volumes.list(
        filters={"label": [f"{PROJECT_LABEL}={settings.project}", f"{VOLUME_LABEL}={DB_VOLUME}"]}
    )
    if volumes:
        raise DockerError(
            f"the database volume {volumes[0].name} of compose project {settings.project} exists, but its"
            f" password is gone with the secrets file {settings.secrets_file}",
            hint=f"restore {settings.secrets_file}, or drop the database: invoke down --volumes, then invoke services",
        )


PORT_SETTINGS = {"redis": "redis_port", "db": "db_port", "api": "api_port"}


def _refuse_ports_in_use(client: docker.DockerClient, settings: Settings) -> None:
    """A host port held by another program makes `compose up` fail half way, with some containers started:
    refuse before anything is made, naming the port, who holds it and the setting to change."""
    seen: dict[int, str] = {}
    for key in PORT_SETTINGS.values():
        port = int(getattr(settings, key))
        if port in seen:
            raise ConfigError(
                f"{key} and {seen[port]} are both {port}: each service needs its own host port",
                hint=f"set another one, e.g. RENDERDEV_{key.upper()}={free_port(settings.bind_host)} invoke setup",
            )
        seen[port] = key
    for svc, key in PORT_SETTINGS.items():
        port = int(getattr(settings, key))
        if port in _published_ports(service_container(client, settings.project, svc)):
            continue  # held by this stack's own container
        if not port_taken(port, settings.bind_host):
            continue
        holders = [str(c.name) for c in client.containers.list() if port in _published_ports(c)]
        who = f"container {', '.join(holders)}" if holders else f"another program (see: ss -ltnp 'sport = :{port}')"
        raise ConfigError(
            f"port {port} on {settings.bind_host} ({key}, for {svc}) is already in use by {who}",
            hint=f"set another one, e.g. RENDERDEV_{key.upper()}={free_port(settings.bind_host)} invoke setup,"
            " or stop what holds it",
        )


def plan_ports(client: docker.DockerClient, settings: Settings) -> tuple[Settings, Step]:
    """A port renderdev may choose (not given by an option, a variable or the project file) that something else
    holds gets a free one, remembered in the project's ports file, so a second stack beside the first needs no
    setting. Returns the settings to go on with and the step that remembers the choice. Explicit ports are never
    changed: a taken one is refused later, naming its holder."""
    changes: dict[str, int] = {}
    notes: list[str] = []
    avoid = {int(getattr(settings, key)) for key in PORT_SETTINGS.values()}
    ours: dict[str, Container] | None = None  # the stack's own containers, listed once when a port is ours to choose
    for svc, key in PORT_SETTINGS.items():
        port = int(getattr(settings, key))
        if key in settings.explicit_ports:
            continue
        if ours is None:
            ours = service_containers(client, settings.project, tuple(PORT_SETTINGS))
        if port in _published_ports(ours.get(svc)):
            continue
        if not port_taken(port, settings.bind_host):
            continue
        new = free_port(settings.bind_host)
        while new in avoid:
            new = free_port(settings.bind_host)
        avoid.add(new)
        changes[key] = new
        notes.append(f"{key} {port} is in use by {_holder(client, port)}: {new} instead")
    title = f"host ports of project {settings.project}"
    ports = ", ".join(f"{svc} {getattr(settings, key)}" for svc, key in PORT_SETTINGS.items())
    if not changes:
        return settings, Step("services", title, StepState.OK, ports)
    chosen = settings.model_copy(update=changes)
    remembered = {
        key: int(getattr(chosen, key)) for key in PORT_SETTINGS.values() if key not in settings.explicit_ports
    }

    def remember() -> str:
        atomic_write_text(settings.ports_file, json.dumps(remembered, indent=2) + "\n", mode=0o600)
        return f"{'; '.join(notes)} (remembered in {settings.ports_file})"

    detail = f"{'; '.join(notes)}; remember them in {settings.ports_file}"
    return chosen, Step("services", title, StepState.CHANGE, detail, remember)


def _holder(client: docker.DockerClient, port: int) -> str:
    holders = [str(c.name) for c in client.containers.list() if port in _published_ports(c)]
    return f"container {', '.join(holders)}" if holders else "another program"


def _published_ports(c: Container | None) -> set[int]:
    """Host ports a container holds now (empty for a stopped one)."""
    if c is None:
        return set()
    bindings = (c.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    return {int(b["HostPort"]) for found in bindings.values() for b in (found or []) if b.get("HostPort")}


def bring_up(client: docker.DockerClient, settings: Settings, *, force_recreate: bool = False) -> str:
    """compose up -d, then wait (through the Docker API) until every service is healthy."""
    missing = [settings.image(svc) for svc in SERVICES if find_image(client, settings.image(svc)) is None]
    if missing:
        raise DockerError(f"image(s) not built yet: {', '.join(missing)}", hint="invoke images")
    driver = compose.detect_driver()
    settings.renders_dir.mkdir(parents=True, exist_ok=True)
    settings.renders_dir.chmod(0o755)  # the api container's non-root user reads the images from here
    started = time.monotonic()
    compose.up(settings, driver=driver, force_recreate=force_recreate)
    wait_healthy(client, settings, started + settings.health_timeout, services=stack_services(settings))
    return f"{driver.describe()} up; healthy after {time.monotonic() - started:.1f} s"


# ---------------------------------------------------------------- health


def wait_healthy(
    client: docker.DockerClient,
    settings: Settings,
    deadline: float,
    *,
    services: Sequence[str] = SERVICES,
    poll: float = POLL_SECONDS,
) -> dict[str, float]:
    """Poll until each service's container is running and healthy; return seconds waited per service.

    `deadline` is a time.monotonic() value. A container that exits, turns unhealthy or keeps
    restarting fails at once; on the deadline, every container still waited for is named with its
    state. Either way the error carries the tail of the container's log.
    """
    started = time.monotonic()
    pending = list(services)
    ready: dict[str, float] = {}
    last: dict[str, str] = {}
    while True:
        for svc in list(pending):
            c = service_container(client, settings.project, svc)
            if c is None:
                last[svc] = "no container yet"
                continue
            state = _state_of(c)
            status = str(state.get("Status", "unknown"))
            health = (state.get("Health") or {}).get("Status")
            last[svc] = status if health is None else f"{status}, {health}"
            if status == "running" and health in ("healthy", None):
                ready[svc] = time.monotonic() - started
                pending.remove(svc)
            elif status in ("exited", "dead") or health == "unhealthy":
                raise _unready(settings, svc, c, last[svc] + _exit_code(state))
            elif int(c.attrs.get("RestartCount") or 0) > MAX_RESTARTS:
                raise _unready(settings, svc, c, f"{last[svc]}, restarted {c.attrs['RestartCount']} times")
        if not pending:
            return ready
        if time.monotonic() >= deadline:
            waited = time.monotonic() - started
            first = service_container(client, settings.project, pending[0])
            states = "; ".join(f"{svc}: {last[svc]}" for svc in pending)
            raise _unready(settings, pending[0], first, f"not healthy after {waited:.0f} s ({states})", timed_out=True)
        time.sleep(poll)


def _exit_code(state: dict[str, Any]) -> str:
    return f" (exit code {state['ExitCode']})" if state.get("Status") in ("exited", "dead") else ""


def _unready(
    settings: Settings, service: str, c: Container | None, what: str, *, timed_out: bool = False
) -> DockerError:
    name = c.name if c is not None else "(none)"
    lines = [f"service {service} of compose project {settings.project} is not ready: container {name} is {what}"]
    if c is not None:
        health_log = (_state_of(c).get("Health") or {}).get("Log") or []
        if health_log:
            output = str(health_log[-1].get("Output", "")).strip()
            lines.append(f"  last health check: exit {health_log[-1].get('ExitCode')}: {output[:300]}")
        try:
            tail = c.logs(tail=LOG_TAIL).decode(errors="replace").rstrip()
        except Exception as exc:  # noqa: BLE001 - the log is a courtesy: never hide the real error
            tail = f"(could not read the log: {exc})"
        if tail:
            lines.append(f"  last {LOG_TAIL} log lines of {name}:")
            lines += [f"  | {line}" for line in tail.splitlines()]
    hint = f"read the whole log: docker logs {name}; fix the cause, then re-run: {FIX}"
    if timed_out:
        hint += f" (or allow more time: RENDERDEV_HEALTH_TIMEOUT, now {settings.health_timeout:.0f} s)"
    return DockerError("\n".join(lines), hint=hint)


# ---------------------------------------------------------------- down and status


def down(client: docker.DockerClient, settings: Settings, volumes: bool) -> str:
    """Remove the project's containers and network, and its volumes with volumes=True. Says what it did."""
    containers = project_containers(client, settings.project)
    label = {"label": f"{PROJECT_LABEL}={settings.project}"}
    vols = client.volumes.list(filters=label) if volumes else []
    nets = client.networks.list(filters=label)
    if not containers and not vols and not nets:
        return f"compose project {settings.project}: nothing to remove"
    compose.down(settings, volumes=volumes)
    left = project_containers(client, settings.project)
    if left:
        names = ", ".join(str(c.name) for c in left)
        raise DockerError(
            f"compose down left containers of project {settings.project}: {names}",
            hint=f"remove them: docker rm -f {names}",
        )
    done = f"compose project {settings.project}: removed {len(containers)} container(s)"
    return done + (f" and {len(vols)} volume(s)" if volumes else " (volumes kept)")


MODE_LABEL = "org.renderdev.api-mode"
LIVE_TARGET = "/opt/renderfarm/lib/python3.11/site-packages/renderfarm"  # where compose/live.yaml mounts it


def running_mode(client: docker.DockerClient, settings: Settings) -> Settings:
    """The settings as the running api was started: live (and from which folder) or the built image. Status
    compares the stack with these, so a live api is not reported as out of date."""
    api = service_container(client, settings.project, "api")
    if api is None or api.labels.get(MODE_LABEL) != "live":
        return settings.model_copy(update={"live": False})
    source = next((m["Source"] for m in api.attrs.get("Mounts", []) if m.get("Destination") == LIVE_TARGET), None)
    return settings.model_copy(update={"live": True, **({"live_source": Path(source)} if source else {})})


def check_services(client: docker.DockerClient, settings: Settings) -> list[Check]:
    """One status line per service (running, healthy, current?), and the mode the api runs in."""
    running = running_mode(client, settings)
    checks = [
        Check(f"service {s.service} ({settings.project})", s.ok, s.describe(), FIX)
        for s in service_states(client, running)
    ]
    mode = (
        f"live: {running.live_source} (reloads on change; back to the image: invoke setup)"
        if running.live
        else f"image {settings.image('api')} (live code: invoke setup --live)"
    )
    return [*checks, Check("api mode", True, mode)]
