"""A warm Blender: one loaded Blender process that renders job after job, fed over a pipe.

Half of a preview's wait is Blender starting up; keeping one loaded removes it. The process is replaced
after a crash, after a timeout (it is killed), and after `max_jobs` jobs (to bound its memory). The
one-process-per-job path (`render_scene`) stays: it is the fallback when a warm Blender cannot start,
and what renderdev's `warm_blender = false` (RENDERDEV_WARM_BLENDER=false) selects for a worker.

In a worker, the warm process belongs to the worker's main process, which makes sure it is alive before
each job; rq runs the job in a forked work horse, which inherits the pipe and talks to it (the RenderWorker's
`warm_for_job()`, renderfarm.worker.render_worker).

A failure names what really happened: the warm process's own command line, its exit status once it has
died (a thread of the parent reaps it and shares the status with the horses, which cannot wait for their
parent's child), and the error the process sent back. A failed render leaves no partial PNG behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import select
import signal
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import IO, Any

from renderfarm.errors import BlenderRenderError, BlenderVanished
from renderfarm.png import strip_png_text
from renderfarm.quality import RenderProfile
from renderfarm.scene import Scene
from renderfarm.worker.blender_process import (
    RenderResult,
    blender_env,
    check_output,
    failure_reason,
    output_tail,
    stop_blender,
)

log = logging.getLogger("renderfarm.worker.warm_blender")
START_TIMEOUT = 60.0
EXIT_STATUS_WAIT = 5.0  # seconds to wait, once the process is gone, for its parent to have reaped it
_STATUS = struct.Struct("<ii")  # the shared exit-status slot: (1 once reaped, else 0; the returncode)


class WarmBlender:
    def __init__(self, blender: str = "blender", *, max_jobs: int = 50) -> None:
        self.blender = blender
        self.max_jobs = max_jobs
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = [blender]  # the running process's command line, once started
        self.served = 0  # jobs handed to this process (counted by whoever calls ensure())
        self._owner = os.getpid()  # the process that started Blender, and so may wait for it
        self._requests: IO[str] | None = None
        self._responses: IO[str] | None = None
        self._log: IO[bytes] | None = None
        # The process's exit status, written by the parent's reaper thread into memory its forked work horses
        # share (MAP_SHARED | MAP_ANONYMOUS): a horse cannot wait for its parent's child, but can read this.
        self._status: mmap.mmap | None = None
        self._script = Path(str(resources.files("renderfarm").joinpath("blender_server.py")))

    # -- lifecycle (the worker's main process) ---------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        if self.proc is None or self.exit_status() is not None:
            return False
        if self._owner == os.getpid():
            return self.proc.poll() is None
        # In a forked work horse, waitpid cannot see the process (it is our parent's child): ask the kernel.
        try:
            os.kill(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def ensure(self) -> None:
        """Before a job: a live process that has not yet served max_jobs, else a fresh one."""
        if self.alive() and self.served < self.max_jobs:
            return
        if self.proc is not None:
            why = "served its jobs" if self.alive() else f"exited {self.exit_status()}"
            log.info("restarting warm Blender (pid %s %s)", self.proc.pid, why)
        self.stop()
        self.start()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._owner = os.getpid()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self._log = tempfile.TemporaryFile(prefix="warm-blender-")
        argv = [
            self.blender, "-b", "--factory-startup", "-noaudio", "--python", str(self._script),
            "--", "--requests", str(req_r), "--responses", str(resp_w),
        ]  # fmt: skip
        self.argv = argv
        self._status = mmap.mmap(-1, _STATUS.size)
        try:
            self.proc = subprocess.Popen(
                argv,
                env=blender_env(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(req_r, resp_w),
                start_new_session=True,  # signals for the worker (SIGRTMIN, Ctrl+C) never reach Blender
            )
        except OSError as exc:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
            raise BlenderRenderError(argv, None, "", reason=f"cannot run {self.blender!r}: {exc.strerror}") from exc
        finally:
            if self.proc is not None:
                os.close(req_r)
                os.close(resp_w)
        threading.Thread(
            target=_reap, args=(self.proc, self._status), name=f"warm-blender-{self.proc.pid}", daemon=True
        ).start()
        self._requests = os.fdopen(req_w, "w")
        self._responses = os.fdopen(resp_r, "r")
        self.served = 0
        ready = self._read(timeout)
        if not ready.get("ready"):
            self.stop()
            raise BlenderRenderError(
                argv, self.exit_status(), "", reason=f"warm Blender said {ready!r} instead of ready"
            )
        log.info("warm Blender ready (pid %s)", self.proc.pid)

    def stop(self) -> None:
        for stream in (self._requests, self._responses):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._requests = self._responses = None
        if self.proc is not None and self._owner == os.getpid():
            stop_blender(self.proc, grace=2.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        elif self.proc is not None:  # a work horse stopping its parent's Blender: signals, then the parent reaps it
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                if self.exit_status(wait=2.0) is not None:
                    break
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- a job (the work horse) ------------------------------------------------------------------------
    def render(
        self, scene: Scene, profile: RenderProfile, out: Path, *, seed: int = 0, timeout: float | None = None
    ) -> RenderResult:
        """Like render_scene, through the warm process. On a timeout or an interruption the process is
        stopped (the next ensure() replaces it). Errors carry the process's real command line (`argv`), its
        exit status once it has died (None while it lives: a scene error leaves it running) and the error it
        sent; the partial PNG is removed, and only after the process is known dead or done with it."""
        if not self.alive() or self._requests is None:
            raise BlenderRenderError(
                self.argv, self.exit_status(), "", reason=f"the warm Blender (pid {self.pid}) is not running"
            )
        out = Path(out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:12]}.partial.png")
        started = time.monotonic()
        mark = self._log_size()
        argv, running = self.argv, f"warm Blender pid {self.pid}, still running"
        try:
            with tempfile.TemporaryDirectory(prefix="renderfarm-") as tmp:
                scene_file = Path(tmp) / "scene.json"
                scene_file.write_text(scene.model_dump_json(), encoding="utf-8")
                request = {"scene": str(scene_file), "out": str(partial), "width": profile.width,
                           "height": profile.height, "samples": profile.samples, "seed": seed,
                           "rows": profile.rows}  # fmt: skip
                try:
                    self._requests.write(json.dumps(request) + "\n")
                    self._requests.flush()
                    reply = self._read(timeout, mark=mark)
                except BaseException:  # timeout, SIGTERM's ShutDownImminentException: stop the render now
                    self.stop()
                    raise
            if not reply.get("ok"):
                raise BlenderRenderError(
                    argv, None, output_tail(self._log_text(mark) + "\n" + str(reply.get("traceback", ""))),
                    reason=str(reply.get("error", "unknown error")), state=running,
                )  # fmt: skip
            check_output(argv, partial, profile, self._log_text(mark), returncode=None, state=running)
            strip_png_text(partial)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        seconds = time.monotonic() - started
        return RenderResult(out, *profile.size, seconds, kept=bool(reply.get("kept")))

    # -- internals -------------------------------------------------------------------------------------
    def exit_status(self, wait: float = 0.0) -> int | None:
        """The process's returncode once its parent has reaped it (negative: the signal that killed it), else
        None; waits up to `wait` seconds for it. Works in the parent and in its forked work horses alike."""
        deadline = time.monotonic() + wait
        while True:
            if self._status is not None:
                reaped, code = _STATUS.unpack(self._status[: _STATUS.size])
                if reaped:
                    return int(code)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def _read(self, timeout: float | None, *, mark: int = 0) -> dict[str, Any]:
        assert self._responses is not None and self.proc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._responses], [], [], wait)
            if not ready:
                self.stop()
                raise BlenderRenderError(
                    self.argv, self.exit_status(wait=EXIT_STATUS_WAIT), output_tail(self._log_text(mark)),
                    reason=f"timed out after {timeout} s and was stopped",
                )  # fmt: skip
            line = self._responses.readline()
            if line:
                data: dict[str, Any] = json.loads(line)
                return data
            # End of stream: the process is gone (or going). Its parent reaps it and shares how it ended.
            code = self.exit_status(wait=EXIT_STATUS_WAIT)
            text = self._log_text(mark)
            how = "its exit status is unknown" if code is None else failure_reason(text, code)
            raise BlenderVanished(
                self.argv, code, output_tail(text), reason=f"the warm Blender (pid {self.pid}) went away mid-job: {how}"
            )

    def _log_size(self) -> int:
        return os.fstat(self._log.fileno()).st_size if self._log is not None else 0

    def _log_text(self, start: int) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        data = os.pread(self._log.fileno(), 1 << 20, start)
        return data.decode("utf-8", errors="replace")


def _reap(proc: subprocess.Popen[bytes], slot: mmap.mmap) -> None:
    """A thread of the process that started Blender: wait for it to end and share its exit status."""
    slot[: _STATUS.size] = _STATUS.pack(1, proc.wait())
