"""A background thread that finds jobs whose worker is gone and moves them on: started jobs whose heartbeat
expired (JobManager.reap_lost), and queued jobs taken off their queue and never started (reap_orphans).

It runs in the API process and in every host worker: rq alone never moves a job to another queue, and
cleans its started-job registry only from a worker on that queue, every 10 minutes by default.
"""

from __future__ import annotations

import logging
import threading

from renderfarm.jobs import JobManager

log = logging.getLogger("renderfarm.reaper")


class Reaper(threading.Thread):
    def __init__(self, manager: JobManager, interval: float) -> None:
        super().__init__(name="renderfarm-reaper", daemon=True)
        self.manager = manager
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                for mjid, where in self.manager.reap_lost():
                    log.warning("job %s lost its worker: %s", mjid, "retried on sq" if where == "sq" else "failed")
                for mjid, where in self.manager.reap_orphans():
                    what = "queued again on sq" if where == "sq" else "failed (rescued too often)"
                    log.warning("job %s was taken off its queue and never started: %s", mjid, what)
            except Exception:  # noqa: BLE001 - Redis or Postgres away: try again next round
                log.exception("reaper round failed")

    def stop(self) -> None:
        self.stopped.set()
