"""A real render worker on this host for a test: `invoke worker` against a test stack, in its own process group,
its output in a log file, ready once rq has registered it, stopped with its whole process tree (Blender included)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.config import REPO_ROOT, Settings
from provisioner.errors import RenderdevError
from provisioner.proc import alive, descendants, kill_tree, tail

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # the SIGTERM drain stops Blender and requeues its job in about 2 s


class WorkerError(RenderdevError):
    """A test worker did not start, or exited early; the message carries its log tail."""


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment without the developer's own RENDERDEV_* settings, plus every setting of
    `settings` (and no project file), so the worker sees exactly the test stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERDEV_")}
    env.update(settings.as_environment())
    env["RENDERDEV_CONFIG"] = str(settings.state_dir / "no-renderdev.toml")  # no project file is read
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    settings: Settings
    queues: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until rq lists this worker in Redis (it is then taking jobs); an early exit or the deadline raises
        WorkerError with the log's tail."""
        import redis
        from rq import Worker

        from provisioner.services import redis_url

        deadline = time.monotonic() + timeout
        with redis.Redis.from_url(redis_url(self.settings)) as r:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise WorkerError(
                        f"the render worker (queues {self.queues}) exited {self.popen.returncode} before it was"
                        f" ready:\n{tail(self.output())}"
                    )
                if any(w.pid == self.pid for w in Worker.all(connection=r)):
                    return
                time.sleep(0.1)
        raise WorkerError(
            f"the render worker (queues {self.queues}) was not ready in {timeout:.0f} s:\n{tail(self.output())}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (the drain: a running job goes to sq), then SIGKILL of whatever is left of its process tree
        and process group (a Blender that outlived its worker). Returns the worker's exit code (None when it had
        to be killed)."""
        tree = descendants(self.pid) if self.popen.poll() is None else []
        code: int | None = self.popen.returncode
        if code is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                code = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.pid)
                self.popen.wait()
                code = None
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # its own session and group: start_new_session
        return code


def start_worker(settings: Settings, log: Path, *, queues: str = "pq,sq", **extra: str) -> WorkerProcess:
    """Start `invoke worker --queues QUEUES` for the stack of `settings` (not yet waited for: wait_ready)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "invoke", "worker", "--queues", queues],
            cwd=REPO_ROOT,
            env=worker_environment(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(settings=settings, queues=queues, popen=popen, log=log)
