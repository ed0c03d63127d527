"""How a render worker takes part in a job beyond rq: claim it, start an attempt, keep it alive, and report how it
ended. Two links, one interface (`FarmLink`), so the job (renderfarm.worker.job) and the liveness threads
(renderfarm.worker.liveness) are the same code whichever a worker has:

- `ApiLink`: the worker holds a worker file (renderfarm.settings.WorkerAccess): every step is an HTTP call to the
  API's worker routes (renderfarm.worker_api) with its worker token, and the image is uploaded. It holds no
  database credential and writes no shared folder: a worker on another host, or in a container, works this way.
- `ManagerLink`: the worker is the stack's own (a host worker started by `invoke worker` without a worker file): the
  JobManager on the stack's Redis and Postgres, the image written into the renders folder the API serves.
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from renderfarm.errors import (
    CredentialRefused,
    NoSuchJob,
    RenderfarmError,
    ServiceUnavailable,
    StaleAttempt,
    StaleRqJob,
)
from renderfarm.jobs import JobManager
from renderfarm.keys import Outcome, image_name
from renderfarm.settings import WorkerAccess
from renderfarm.tls import ca_context

log = logging.getLogger("renderfarm.worker.farm_link")
# An upload or report that meets a network blip or a 503 is tried again this many times, waiting RETRY_WAIT
# seconds more each time (about 45 s in all): longer than an api restart, shorter than the heartbeat TTL's loss.
RETRIES = 8
RETRY_WAIT = 1.25
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@functools.cache
def tls_context(ca: str | None = None) -> ssl.SSLContext:
    """One TLS context per process (and CA), made once: each work horse makes an HTTP client of its own, and loading
    the CA bundle for every job's client would cost it several milliseconds. The worker's main process makes it before
    it forks any horse (its own ApiLink), so the horses inherit it made. `ca`: the worker file's CA (an exposed
    stack), trusted alone (renderfarm.tls); None: the default bundle."""
    return ca_context(ca) if ca is not None else httpx.create_ssl_context()


@dataclass(frozen=True)
class Started:
    """An attempt begun: its number, the queue it came from, its quality and scene, the heartbeat TTL to keep, and
    for a tile of a tiled job its (index, count)."""

    attempt: int
    queue: str
    quality: str
    scene: dict[str, Any]
    heartbeat_ttl: float
    tile: tuple[int, int] | None = None


class FarmLink(Protocol):
    heartbeat_ttl: float
    uploads: bool  # the image goes to the API from a work folder of the job's own (else: into the renders folder)

    def claim(self, mjid: str, rq_job: str) -> None: ...
    def start(self, mjid: str, worker: str, rq_job: str) -> Started: ...
    def heartbeat(self, mjid: str, attempt: int) -> bool: ...
    def output_path(self, mjid: str, attempt: int, work_dir: Path) -> Path: ...
    def finish(self, mjid: str, attempt: int, image: Path) -> None: ...
    def fail(self, mjid: str, attempt: int, error: str) -> None: ...
    def requeue(self, mjid: str, attempt: int, outcome: Outcome, error: str | None = None) -> None: ...
    def close(self) -> None: ...


class ManagerLink:
    """The stack's own worker: the JobManager itself, the image written straight into the renders folder."""

    uploads = False

    def __init__(self, manager: JobManager, renders_dir: Path, *, close: Callable[[], None] | None = None) -> None:
        self.manager = manager
        self.renders_dir = renders_dir
        self.heartbeat_ttl = manager.heartbeat_ttl
        self._close = close

    def claim(self, mjid: str, rq_job: str) -> None:
        self.manager.claim(mjid, rq_job)

    def start(self, mjid: str, worker: str, rq_job: str) -> Started:
        view = self.manager.mark_started(mjid, worker, rq_job=rq_job)
        scene = self.manager.scene(mjid)
        return Started(view.attempts, view.queue.value, view.quality, scene, self.heartbeat_ttl, view.tile_of)

    def heartbeat(self, mjid: str, attempt: int) -> bool:
        return self.manager.heartbeat(mjid, attempt)

    def output_path(self, mjid: str, attempt: int, work_dir: Path) -> Path:
        return self.renders_dir / image_name(mjid, attempt)

    def finish(self, mjid: str, attempt: int, image: Path) -> None:
        try:
            self.manager.mark_finished(mjid, image.name, attempt=attempt)
        except StaleAttempt:
            image.unlink(missing_ok=True)
            raise

    def fail(self, mjid: str, attempt: int, error: str) -> None:
        self.manager.mark_failed(mjid, error, attempt=attempt)

    def requeue(self, mjid: str, attempt: int, outcome: Outcome, error: str | None = None) -> None:
        self.manager.retry_on_standard(mjid, outcome, attempt=attempt, error=error)

    def close(self) -> None:
        if self._close is not None:
            self._close()


class ApiLink:
    """A worker that holds only its worker file: each step an HTTP call to the API's worker routes."""

    uploads = True

    def __init__(self, access: WorkerAccess, *, transport: httpx.BaseTransport | None = None) -> None:
        self.access = access
        self.heartbeat_ttl = 20.0  # until `start` answers with the server's
        self.client = httpx.Client(
            base_url=access.api_url,
            headers={"Authorization": f"Bearer {access.token}"},
            timeout=TIMEOUT,
            transport=transport,
            verify=tls_context(access.ca),
        )

    def check(self) -> str:
        """Ask the API whose credential this is (CredentialRefused, ServiceUnavailable): a worker's first call."""
        body = self._call("GET", "/worker/me", "-", retries=2)
        return str(body["name"])

    def claim(self, mjid: str, rq_job: str) -> None:
        body = self._call("POST", f"/worker/jobs/{mjid}/claim", mjid, json={"rq_job": rq_job}, retries=1)
        self.heartbeat_ttl = float(body["heartbeat_ttl"])

    def start(self, mjid: str, worker: str, rq_job: str) -> Started:
        try:
            body = self._call("POST", f"/worker/jobs/{mjid}/start", mjid, json={"rq_job": rq_job, "worker": worker})
        except StaleAttempt as exc:  # a 409 here: the rq job no longer carries the mjid
            raise StaleRqJob(mjid, rq_job, "another") from exc
        self.heartbeat_ttl = float(body["heartbeat_ttl"])
        tile = (int(body["tile"]), int(body["tiles"])) if body.get("tile") is not None else None
        return Started(int(body["attempt"]), body["queue"], body["quality"], body["scene"], self.heartbeat_ttl, tile)

    def heartbeat(self, mjid: str, attempt: int) -> bool:
        try:
            self._call("POST", f"/worker/jobs/{mjid}/attempts/{attempt}/heartbeat", mjid, attempt=attempt, retries=1)
        except StaleAttempt:
            return False
        return True

    def output_path(self, mjid: str, attempt: int, work_dir: Path) -> Path:
        return work_dir / image_name(mjid, attempt)

    def finish(self, mjid: str, attempt: int, image: Path) -> None:
        try:
            self._call(
                "PUT",
                f"/worker/jobs/{mjid}/attempts/{attempt}/image",
                mjid,
                attempt=attempt,
                content=image.read_bytes(),
                headers={"Content-Type": "image/png"},
            )
        finally:
            image.unlink(missing_ok=True)  # the API keeps the image now, or nobody wants it

    def fail(self, mjid: str, attempt: int, error: str) -> None:
        path = f"/worker/jobs/{mjid}/attempts/{attempt}/failed"
        self._call("POST", path, mjid, attempt=attempt, json={"error": error[-4000:]})

    def requeue(self, mjid: str, attempt: int, outcome: Outcome, error: str | None = None) -> None:
        body = {"outcome": outcome.value, "error": error[-4000:] if error else None}
        self._call("POST", f"/worker/jobs/{mjid}/attempts/{attempt}/requeue", mjid, attempt=attempt, json=body)

    def close(self) -> None:
        self.client.close()

    def _call(
        self, method: str, path: str, mjid: str, *, attempt: int = 0, retries: int = RETRIES, **kwargs: Any
    ) -> dict[str, Any]:
        """One call, tried again on a network error or a 503; the API's refusals as the render system's errors."""
        for n in range(retries + 1):
            try:
                answer = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"the API at {self.access.api_url} does not answer ({type(exc).__name__})"
            else:
                if answer.status_code != 503:
                    return self._answer(answer, mjid, attempt)
                problem = f"the API at {self.access.api_url} answers 503 ({answer.json().get('service', '?')} away)"
            if n < retries:
                log.warning("%s %s: %s; trying again", method, path, problem)
                time.sleep(RETRY_WAIT * (n + 1))
        raise ServiceUnavailable(f"{method} {path}: {problem}")

    def _answer(self, answer: httpx.Response, mjid: str, attempt: int) -> dict[str, Any]:
        if answer.status_code in (200, 202):
            body: dict[str, Any] = answer.json()
            return body
        if answer.status_code == 204:
            return {}
        detail = _detail(answer)
        if answer.status_code == 409:
            stale = StaleAttempt(mjid, attempt, 0, str(answer.json().get("state", "?")))
            stale.args = (f"job {mjid}: attempt {attempt} is stale: {detail}",)  # the API's own words
            raise stale
        if answer.status_code == 404:
            raise NoSuchJob(mjid)
        if answer.status_code == 401:
            raise CredentialRefused(
                f"the API at {self.access.api_url} refuses worker credential {self.access.name!r}: {detail}"
            )
        raise RenderfarmError(f"the API answered {answer.status_code} for job {mjid}: {detail}")


def _detail(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail", answer.text)
    except ValueError:
        return answer.text[:300]
    return str(detail)[:300]
