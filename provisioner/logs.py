"""`invoke logs`: the stack's container logs and the host workers' logs, interleaved by time, each line prefixed
with its source, with the stack's secrets masked.

Containers' lines come from the Docker API with their timestamps; host workers write theirs to
`<state>/<project>/logs/worker-*.log`, each line starting with an ISO-8601 UTC time (provisioner.worker).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.config import SERVICES, Settings
from provisioner.dockerapi import service_container
from provisioner.errors import ConfigError

if TYPE_CHECKING:
    import docker
    from rich.console import Console

MASK = "********"
SINCE = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
POLL = 0.25


@dataclass(frozen=True, order=True)
class Line:
    at: datetime
    source: str
    text: str


def logs_dir(settings: Settings) -> Path:
    return settings.project_state_dir / "logs"


def worker_log_path(settings: Settings, worker: str) -> Path:
    """Where a host worker of this project writes its log (the name is the rq worker's: host-kind-pid)."""
    return logs_dir(settings) / f"worker-{worker}.log"


def parse_since(raw: str | None, now: datetime | None = None) -> datetime | None:
    """`10m`, `2h`, `30s`, `1d`, or an ISO-8601 time; None for none."""
    if raw is None:
        return None
    now = now or datetime.now(UTC)
    found = SINCE.fullmatch(raw.strip())
    if found:
        return now - timedelta(**{UNITS[found.group(2)]: int(found.group(1))})
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ConfigError(
            f"--since {raw!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO time",
            hint="e.g. invoke logs --since 10m",
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def parse_stamp(text: str) -> tuple[datetime | None, str]:
    """Split a leading RFC 3339 timestamp (Docker's, with nanoseconds, or a worker's) from the rest of a line."""
    head, _, rest = text.partition(" ")
    stamp = head.rstrip("Z")
    if "." in stamp:
        whole, frac = stamp.split(".", 1)
        frac = re.sub(r"[^0-9].*$", "", frac)[:6]
        stamp = f"{whole}.{frac}"
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return None, text
    return (at if at.tzinfo else at.replace(tzinfo=UTC)), rest


class Masker:
    """Replaces every secret value of the stack (Redis and Postgres passwords) in a line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, MASK)
        return text


def _container_lines(
    client: docker.DockerClient, settings: Settings, service: str, since: datetime | None, follow: bool
) -> Iterator[Line]:
    c = service_container(client, settings.project, service)
    if c is None:
        return
    kwargs: dict[str, object] = {"timestamps": True, "stream": True, "follow": follow}
    if since is not None:
        kwargs["since"] = since
    last: datetime = datetime.fromtimestamp(0, UTC)
    pending = b""
    for chunk in c.logs(**kwargs):
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for raw in whole:
            at, text = parse_stamp(raw.decode(errors="replace"))
            last = at or last
            yield Line(last, service, text)


def _worker_lines(path: Path, since: datetime | None, follow: bool, stop: threading.Event) -> Iterator[Line]:
    source = path.stem.removeprefix("worker-")
    last: datetime = datetime.fromtimestamp(0, UTC)
    with path.open(errors="replace") as f:
        while True:
            raw = f.readline()
            if not raw:
                if not follow or stop.is_set():
                    return
                time.sleep(POLL)
                continue
            at, text = parse_stamp(raw.rstrip("\n"))
            last = at or last
            if since is None or last >= since:
                yield Line(last, source, text)


def _sources(
    client: docker.DockerClient,
    settings: Settings,
    services: list[str],
    workers: bool,
    since: datetime | None,
    follow: bool,
    stop: threading.Event,
) -> list[Iterator[Line]]:
    found = [_container_lines(client, settings, svc, since, follow) for svc in services]
    if workers and logs_dir(settings).is_dir():
        found += [_worker_lines(p, since, follow, stop) for p in sorted(logs_dir(settings).glob("worker-*.log"))]
    return found


def show_logs(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    services: list[str],
    follow: bool = False,
    since: str | None = None,
    workers: bool = False,
) -> int:
    """Print the lines (sorted by time; with follow, as they come). Returns how many were printed."""
    from provisioner.secrets import read_secrets

    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise ConfigError(f"no service {', '.join(map(repr, unknown))} (there are: {', '.join(SERVICES)})")
    mask = Masker(read_secrets(settings).values() if settings.secrets_file.exists() else [])
    wanted = services or list(SERVICES)
    stop = threading.Event()
    sources = _sources(client, settings, wanted, workers or not services, parse_since(since), follow, stop)
    width = max([len(s) for s in wanted] + [6])

    def emit(line: Line) -> None:
        console.print(f"{line.source:<{width}} | {mask(line.text)}", highlight=False, markup=False, soft_wrap=True)

    if not follow:
        lines = sorted(line for src in sources for line in src)
        for line in lines:
            emit(line)
        return len(lines)
    return _follow(sources, emit, stop)


def _follow(sources: list[Iterator[Line]], emit: Callable[[Line], None], stop: threading.Event) -> int:
    """One thread per source feeding a queue; printed in arrival order until Ctrl+C."""
    q: queue.Queue[Line] = queue.Queue()

    def pump(src: Iterator[Line]) -> None:
        for line in src:
            q.put(line)

    for src in sources:
        threading.Thread(target=pump, args=(src,), daemon=True).start()
    count = 0
    try:
        while True:
            emit(q.get())
            count += 1
    except KeyboardInterrupt:
        stop.set()
        return count
