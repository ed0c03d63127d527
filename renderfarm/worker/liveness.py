"""How a worker shows it is alive while it has a job: `Claim` (its main process, from the moment it takes the
job off its queue) and `Heartbeat` (its work horse, while the job renders). Both refresh a key with the
heartbeat TTL every third of it; a worker that vanishes stops refreshing, and the reaper (renderfarm.reaper)
moves its job on.
"""

from __future__ import annotations

import logging
import threading

from renderfarm.errors import CredentialRefused
from renderfarm.worker.farm_link import FarmLink

log = logging.getLogger("renderfarm.worker.liveness")


class Heartbeat(threading.Thread):
    """Refreshes the job's heartbeat every third of its TTL until stopped or the attempt goes stale."""

    def __init__(self, link: FarmLink, mjid: str, attempt: int) -> None:
        super().__init__(name=f"heartbeat-{mjid}", daemon=True)
        self.link, self.mjid, self.attempt = link, mjid, attempt
        self.stopped = threading.Event()

    def run(self) -> None:
        period = self.link.heartbeat_ttl / 3
        while not self.stopped.wait(period):
            try:
                if not self.link.heartbeat(self.mjid, self.attempt):
                    log.warning("job %s attempt %d is no longer ours; heartbeat stops", self.mjid, self.attempt)
                    return
            except Exception:  # noqa: BLE001 - a blip in Redis must not kill the render; the TTL covers it
                log.exception("heartbeat for %s failed", self.mjid)

    def stop(self) -> None:
        self.stopped.set()


class Claim(threading.Thread):
    """In a worker's main process, from the moment it has taken rq job `rq_job` (carrying mjid) off its
    queue: claims the job at once (the link's `claim`) and refreshes the claim every third of the heartbeat
    TTL until stopped, i.e. for as long as the worker is getting ready (its warm Blender starting) and its
    work horse runs."""

    def __init__(self, link: FarmLink, mjid: str, rq_job: str) -> None:
        super().__init__(name=f"claim-{mjid}", daemon=True)
        self.link, self.mjid, self.rq_job = link, mjid, rq_job
        self.stopped = threading.Event()
        self.refused: CredentialRefused | None = None

    def start(self) -> None:
        """Claim at once, then keep refreshing in this thread. A refused credential is kept in `refused` (and no
        thread starts): the worker then leaves the job alone and stops."""
        try:
            self.link.claim(self.mjid, self.rq_job)  # before anything else can take time
        except CredentialRefused as exc:
            self.refused = exc
            return
        except Exception:  # noqa: BLE001 - Redis away: the job is unclaimed, so the rescue's grace applies
            log.exception("claim on %s failed", self.mjid)
        super().start()

    def run(self) -> None:
        while not self.stopped.wait(self.link.heartbeat_ttl / 3):
            try:
                self.link.claim(self.mjid, self.rq_job)
            except Exception:  # noqa: BLE001 - a blip in Redis: the next refresh comes well within the TTL
                log.exception("claim on %s failed", self.mjid)

    def stop(self) -> None:
        self.stopped.set()
