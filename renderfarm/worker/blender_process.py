"""One Blender process per render: a validated Scene to a PNG with the host's Blender (Cycles on the CPU,
denoising off, fixed seed), and what the warm Blender shares with it (its environment, how it is stopped, how its
output is checked and its failure named).

`render_scene()` writes the scene JSON to a temporary folder, runs `blender_scene.py` inside Blender
(an argv list, never a shell, PYTHONPATH/PYTHONHOME scrubbed) and moves the PNG into place atomically.
Any failure raises `BlenderRenderError` with the command, the exit code and the useful tail of Blender's
output (the scene script's own error line first).

Blender runs in its own session (process group), so a worker can stop it on demand: pass `on_start`
to receive the `Popen`, and call `stop_blender(proc)` from e.g. a SIGTERM handler; `render_scene` then
raises `BlenderRenderError` with the signal as exit code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from renderfarm.errors import BlenderRenderError, RenderConfigError, RenderfarmError
from renderfarm.png import png_size, strip_png_text
from renderfarm.quality import RenderProfile
from renderfarm.scene import Scene

log = logging.getLogger("renderfarm.worker.blender_process")

TAIL_LINES = 20
# Marker the Blender-side script prints before re-raising; keep in sync with blender_scene.ERROR_PREFIX.
SCRIPT_ERROR_PREFIX = "renderfarm-scene: error: "
_SCRUB = ("PYTHONPATH", "PYTHONHOME")


@dataclass(frozen=True)
class RenderResult:
    path: Path
    width: int
    height: int
    seconds: float
    kept: bool = False  # a warm Blender kept the last job's built scene (only the camera moved)


def blender_command(
    blender: str, script: Path, scene_file: Path, out: Path, profile: RenderProfile, seed: int
) -> list[str]:
    """The argv that renders scene_file to out inside Blender."""
    return [
        blender,
        "-b",
        "--factory-startup",
        "-noaudio",
        "--python-exit-code",
        "1",
        "--python",
        str(script),
        "--",
        "--scene",
        str(scene_file),
        "--out",
        str(out),
        "--width",
        str(profile.width),
        "--height",
        str(profile.height),
        "--samples",
        str(profile.samples),
        "--seed",
        str(seed),
        *(() if profile.rows is None else ("--rows", str(profile.rows[0]), str(profile.rows[1]))),
    ]


def stop_blender(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """Stop a Blender started by render_scene: SIGTERM to its process group, SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def blender_env() -> dict[str, str]:
    """The environment Blender runs in: no host PYTHONPATH/PYTHONHOME, and a fixed str hash seed."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    # Blender's Python randomises str hashes per process: fix them, so the scene script runs the same
    # way every time. (Cycles itself still differs by a few pixels between runs: see tests/pixels.py.)
    env["PYTHONHASHSEED"] = "0"
    return env


def render_scene(
    scene: Scene,
    profile: RenderProfile,
    out: Path,
    *,
    blender: str = "blender",
    timeout: float | None = None,
    seed: int = 0,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> RenderResult:
    """Render scene at profile's size and samples to the PNG `out` (replaced atomically; parents created).

    Raises BlenderRenderError when Blender cannot be started, exits non-zero, is killed, runs past
    `timeout` seconds, or leaves no PNG of the expected size; `out` is then left as it was.
    """
    if not 0 <= seed <= 2**31 - 1:
        raise RenderConfigError(f"render seed must be from 0 to {2**31 - 1}, got {seed}")
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:12]}.partial.png")
    env = blender_env()
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="renderfarm-") as tmp,
            resources.as_file(resources.files("renderfarm").joinpath("blender_scene.py")) as script,
        ):
            scene_file = Path(tmp) / "scene.json"
            scene_file.write_text(scene.model_dump_json(), encoding="utf-8")
            argv = blender_command(blender, script, scene_file, partial, profile, seed)
            output = _run_blender(argv, env, timeout, on_start)
            check_output(argv, partial, profile, output)
        strip_png_text(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    width, height = profile.size
    log.info("rendered %s (%dx%d, %d samples) in %.1f s", out, width, height, profile.samples, seconds)
    return RenderResult(path=out, width=width, height=height, seconds=seconds)


def _run_blender(
    argv: list[str],
    env: dict[str, str],
    timeout: float | None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None,
) -> str:
    """Run Blender in its own process group; its combined output, or BlenderRenderError."""
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:  # not found, not executable
        raise BlenderRenderError(
            argv, None, "", reason=f"cannot run {argv[0]!r}: {exc.strerror} (link Blender with: invoke setup)"
        ) from exc
    with proc:
        try:
            if on_start is not None:
                on_start(proc)
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_blender(proc, grace=2.0)
            output, _ = proc.communicate()
            text = output.decode("utf-8", errors="replace")
            raise BlenderRenderError(
                argv, proc.returncode, output_tail(text), reason=f"timed out after {timeout} s and was stopped"
            ) from None
        except BaseException:  # KeyboardInterrupt, a failing callback: never leave Blender running
            stop_blender(proc, grace=2.0)
            raise
    text = output.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise BlenderRenderError(argv, proc.returncode, output_tail(text), reason=failure_reason(text, proc.returncode))
    log.debug("blender output tail:\n%s", output_tail(text))
    return text


def check_output(
    argv: list[str],
    partial: Path,
    profile: RenderProfile,
    output: str,
    *,
    returncode: int | None = 0,
    state: str | None = None,
) -> None:
    """The PNG Blender said it wrote is there, and of the profile's size (its band's, for a tile); else
    BlenderRenderError with the command and its exit code (or `state`, for a warm Blender that answered and lives
    on)."""
    tail = output_tail(output)
    said = "blender exited 0" if state is None else "the warm Blender answered ok"
    if not partial.is_file() or partial.stat().st_size == 0:
        raise BlenderRenderError(argv, returncode, tail, reason=f"{said} but wrote no image at {partial}", state=state)
    try:
        size = png_size(partial)
    except RenderfarmError as exc:
        raise BlenderRenderError(argv, returncode, tail, reason=str(exc), state=state) from exc
    if size != profile.size:
        wrote = f"blender wrote a {size[0]}x{size[1]} image, expected {profile.size[0]}x{profile.size[1]}"
        raise BlenderRenderError(argv, returncode, tail, reason=wrote, state=state)


_PY_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


def failure_reason(output: str, returncode: int | None) -> str:
    """The one line that says why Blender failed: the scene script's error, a Python exception, or Blender's."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(SCRIPT_ERROR_PREFIX):
            return line[len(SCRIPT_ERROR_PREFIX) :]
    for line in reversed(lines):
        if _PY_EXCEPTION.match(line) or (line.startswith("Error: ") and "script failed" not in line):
            return line
    if returncode is not None and returncode < 0:
        try:
            return f"blender was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"blender was killed by signal {-returncode}"
    return f"blender exited with code {returncode}"


def output_tail(output: str, lines: int = TAIL_LINES) -> str:
    """The last lines of Blender's output, without its per-sample progress lines ("Fra:1 Mem:...")."""
    kept = [line for line in output.splitlines() if line.strip() and not line.startswith("Fra:")]
    return "\n".join(kept[-lines:])
