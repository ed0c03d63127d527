"""Render a validated Scene to a PNG with the host's Blender (Cycles on the CPU, denoising off, fixed seed).

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
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from renderfarm.errors import BlenderRenderError, RenderConfigError, RenderfarmError
from renderfarm.scene import Scene

log = logging.getLogger("renderfarm.render")

TAIL_LINES = 20
# Marker the Blender-side script prints before re-raising; keep in sync with blender_scene.ERROR_PREFIX.
SCRIPT_ERROR_PREFIX = "renderfarm-scene: error: "
_SCRUB = ("PYTHONPATH", "PYTHONHOME")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text chunks Blender fills with render times: dropped so the same scene and seed give the same bytes.
_PNG_VOLATILE_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME"})
_MAX_SAMPLES = 4096
_MAX_PIXELS_SIDE = 8192


class Quality(StrEnum):
    PREVIEW = "preview"
    HD = "hd"


@dataclass(frozen=True)
class RenderProfile:
    """Output size in pixels and Cycles samples per pixel for one quality tier."""

    width: int
    height: int
    samples: int

    def __post_init__(self) -> None:
        for name, value, top in (
            ("width", self.width, _MAX_PIXELS_SIDE),
            ("height", self.height, _MAX_PIXELS_SIDE),
            ("samples", self.samples, _MAX_SAMPLES),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise RenderConfigError(f"render profile {name} must be a whole number from 1 to {top}, got {value!r}")


DEFAULT_PROFILES: Mapping[Quality, RenderProfile] = MappingProxyType(
    {
        Quality.PREVIEW: RenderProfile(width=640, height=360, samples=16),
        Quality.HD: RenderProfile(width=1920, height=1080, samples=32),
    }
)
SAMPLES_ENV: Mapping[Quality, str] = MappingProxyType(
    {Quality.PREVIEW: "RENDERFARM_PREVIEW_SAMPLES", Quality.HD: "RENDERFARM_HD_SAMPLES"}
)


def profiles_from_env(environ: Mapping[str, str] | None = None) -> dict[Quality, RenderProfile]:
    """The default profiles with samples overridden by RENDERFARM_{PREVIEW,HD}_SAMPLES (read now, not at import)."""
    env = os.environ if environ is None else environ
    profiles: dict[Quality, RenderProfile] = {}
    for quality, default in DEFAULT_PROFILES.items():
        name = SAMPLES_ENV[quality]
        raw = env.get(name, "").strip()
        if not raw:
            profiles[quality] = default
            continue
        try:
            samples = int(raw, 10)
        except ValueError:
            samples = 0
        if not 1 <= samples <= _MAX_SAMPLES:
            raise RenderConfigError(
                f"{name} must be a whole number of samples from 1 to {_MAX_SAMPLES}, got {raw!r}"
                f" (unset it to use the default, {default.samples})"
            )
        profiles[quality] = RenderProfile(width=default.width, height=default.height, samples=samples)
    return profiles


def profile_for(quality: Quality | str, environ: Mapping[str, str] | None = None) -> RenderProfile:
    """The profile of one tier ("preview" or "hd"), with the environment's overrides."""
    try:
        tier = Quality(quality)
    except ValueError:
        choices = ", ".join(q.value for q in Quality)
        raise RenderConfigError(f"unknown render quality: {quality!r} (choose one of: {choices})") from None
    return profiles_from_env(environ)[tier]


@dataclass(frozen=True)
class RenderResult:
    path: Path
    width: int
    height: int
    seconds: float


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
    log.info("rendered %s (%dx%d, %d samples) in %.1f s", out, profile.width, profile.height, profile.samples, seconds)
    return RenderResult(path=out, width=profile.width, height=profile.height, seconds=seconds)


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
    """The PNG Blender said it wrote is there, and of the profile's size; else BlenderRenderError with the
    command and its exit code (or `state`, for a warm Blender that answered and lives on)."""
    tail = output_tail(output)
    said = "blender exited 0" if state is None else "the warm Blender answered ok"
    if not partial.is_file() or partial.stat().st_size == 0:
        raise BlenderRenderError(argv, returncode, tail, reason=f"{said} but wrote no image at {partial}", state=state)
    try:
        size = png_size(partial)
    except RenderfarmError as exc:
        raise BlenderRenderError(argv, returncode, tail, reason=str(exc), state=state) from exc
    if size != (profile.width, profile.height):
        wrote = f"blender wrote a {size[0]}x{size[1]} image, expected {profile.width}x{profile.height}"
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


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; RenderfarmError if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise RenderfarmError(f"not a PNG image: {path}")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def strip_png_text(path: Path) -> None:
    """Rewrite the PNG at path without its text and time chunks (Blender stores render timings there)."""
    data = path.read_bytes()
    kept = [data[:8]]
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise RenderfarmError(f"truncated PNG chunk {kind!r} in {path}")
        if kind not in _PNG_VOLATILE_CHUNKS:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    with open(path, "wb") as f:
        f.write(b"".join(kept))
        f.flush()
        os.fsync(f.fileno())
