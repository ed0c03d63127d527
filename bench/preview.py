"""Pair 2: an end-to-end preview through the stack vs a bare Blender render of the same scene.

A: POST /renders (preview), poll GET /renders/{mjid} every POLL seconds until finished, GET the image
(a PNG): the API, the JobManager, rq and a long-running `invoke worker --queues pq` with its warm
Blender, started before the pairs (the warm-up pair starts its Blender).
B: `blender -b --factory-startup -noaudio --python-exit-code 1 --python renderfarm/blender_scene.py -- ...`
with the same scene (`Scene.model_dump_json()` of the parsed scene), size, samples and seed, run with the
bench stack's linked Blender (the install from the loopback mirror).

Two scenes, two pairs: `preview`, the furnished-room example (what `invoke render` sends by default: on
two cores its render takes several times Blender's start-up), and `preview_small`, its first five objects
(a render about as long as Blender's start-up, the case the issue's goal was written for).

A third pair, `iterate`: the furnished room posted again and again with only the camera moved (a user walking
through their room), each run a new position; B renders that same moved scene with bare Blender. The warm
Blender keeps the built scene between such jobs (blender_scene.render_spec, keep=True); B cannot.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from importlib import resources
from typing import Any

import httpx

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, run_pair
from bench.proc import run
from bench.stack import BenchStack, Log
from provisioner.config import Settings
from provisioner.credits import read_token
from provisioner.services import api_url
from renderfarm.examples import example_scene_path
from renderfarm.png import png_size
from renderfarm.quality import DEFAULT_PROFILES, Quality, RenderProfile
from renderfarm.scene import parse_scene
from renderfarm.worker.blender_process import blender_command, blender_env

NAME = "preview"
SMALL = "preview_small"
ITERATE = "iterate"
CAMERA_STEP = 0.02  # metres the camera moves along x between two iterate runs
SMALL_OBJECTS = 5
POLL = 0.05  # seconds between status requests (invoke render's own spinner polls every 0.25 s)
RENDER_TIMEOUT = 300.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Cycles' progress line in `blender -b`'s output: "Fra:1 Mem:... | Time:00:03.43 | ... | Sample 16/16"
_SAMPLE_LINE = re.compile(r"\| Time:(?:(\d+):)?(\d+):(\d+(?:\.\d+)?) \|.*\| Sample (\d+)/(\d+)\s*$")


def sampling_seconds(blender_output: str) -> float | None:
    """How long Cycles sampled, by its own log: from "Sample 0/N" (path tracing begins, the scene built and the
    kernels loaded) to "Sample N/N". None when the output has no such lines (another engine, or a failed render).
    Blender's elapsed times are read, not the wall clock, so a slow pipe does not count."""
    first: float | None = None
    last: float | None = None
    for line in blender_output.splitlines():
        m = _SAMPLE_LINE.search(line)
        if m is None:
            continue
        hours, minutes, seconds, done, total = m.groups()
        at = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
        if done == "0" and first is None:
            first = at
        if done == total:
            last = at
    if first is None or last is None or last < first:
        return None
    return last - first


def api_client(settings: Settings, user: str) -> httpx.Client:
    """An HTTP client for the bench stack's API, carrying `user`'s API token (saved by seed-credits)."""
    token = read_token(settings, user)
    return httpx.Client(base_url=api_url(settings), timeout=30.0, headers={"Authorization": f"Bearer {token}"})


def fetch_render(http: httpx.Client, user: str, scene: dict[str, Any], quality: str = "preview") -> bytes:
    """POST a render as `user` (the client carries their token), wait for it, GET its image; the PNG's bytes."""
    resp = http.post("/renders", json={"user": user, "quality": quality, "scene": scene})
    if resp.status_code != 202:
        raise BenchError(f"POST /renders answered {resp.status_code}: {resp.text[:300]}")
    mjid = resp.json()["mjid"]
    deadline = time.monotonic() + RENDER_TIMEOUT
    while True:
        job = http.get(f"/renders/{mjid}").json()
        if job["state"] == "finished":
            break
        if job["state"] == "failed":
            raise BenchError(f"render {mjid} failed: {job.get('error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"render {mjid} still {job['state']} after {RENDER_TIMEOUT:.0f} s")
        time.sleep(POLL)
    img = http.get(f"/renders/{mjid}/image")
    if img.status_code != 200 or not img.content.startswith(PNG_SIGNATURE):
        raise BenchError(f"GET /renders/{mjid}/image answered {img.status_code}, not a PNG")
    return img.content


def measure(
    stack: BenchStack, *, pairs: int, warmup: int, log: Log, small: bool = False, iterate: bool = False
) -> PairResult:
    settings = stack.settings
    scene_data = json.loads(example_scene_path().read_text())
    if small:
        scene_data["objects"] = scene_data["objects"][:SMALL_OBJECTS]
    scene = parse_scene(scene_data)
    profile: RenderProfile = DEFAULT_PROFILES[Quality.PREVIEW]
    name = SMALL if small else ITERATE if iterate else NAME
    moves = 0  # iterate: how often the camera has moved
    work = stack.root / name
    work.mkdir(parents=True, exist_ok=True)
    scene_file = work / "scene.json"
    scene_file.write_text(scene.model_dump_json(), encoding="utf-8")
    out = work / "bare.png"
    user = stack.seed_user()
    r = stack.redis()
    worker = stack.start_worker("pq", f"{name}-worker")
    try:
        stack.wait_for_worker(worker, f"{name}-worker", r)
        with (
            api_client(settings, user) as http,
            resources.as_file(resources.files("renderfarm").joinpath("blender_scene.py")) as script,
        ):
            argv = blender_command(str(settings.blender_link), script, scene_file, out, profile, 0)
            env = blender_env()
            sampling: list[float] = []  # each bare render's sampling time, by Cycles' own log

            def end_to_end() -> float:
                nonlocal scene_data, moves
                if iterate:  # a new camera position; B then renders the very same scene
                    moves += 1
                    scene_data = moved_camera(scene_data, CAMERA_STEP)
                    scene_file.write_text(parse_scene(scene_data).model_dump_json(), encoding="utf-8")
                start = time.perf_counter()
                fetch_render(http, user, scene_data)
                return time.perf_counter() - start

            def bare_blender() -> float:
                out.unlink(missing_ok=True)
                seconds, done = run(argv, env=env, timeout=RENDER_TIMEOUT)
                if png_size(out) != (profile.width, profile.height):
                    raise BenchError(f"bare Blender wrote {png_size(out)}, expected {profile.width}x{profile.height}")
                sampled = sampling_seconds(done.stdout)
                if sampled is not None:
                    sampling.append(sampled)
                return seconds

            spec = PairSpec(
                name=name,
                title=f"end-to-end preview ({profile.width}x{profile.height}, {profile.samples} samples, "
                f"{len(scene.objects)} objects{', only the camera moved since the last job' if iterate else ''})"
                " vs bare blender -b of the same scene",
                a_label="POST /renders -> poll -> GET image (warm worker)",
                b_label="blender -b --python blender_scene.py",
                a=end_to_end,
                b=bare_blender,
                goal=Goal(0.5 if iterate else 0.7, GoalKind.AT_MOST),
            )
            result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
    except BaseException:
        log(f"{name} worker log:\n{stack.worker_log(f'{name}-worker')}")
        raise
    finally:
        stack.stop_worker(worker)
        r.close()
    what = f"its first {SMALL_OBJECTS} objects" if small else "all of it"
    result.notes.append(
        f"scene: {example_scene_path().name}, {what} ({len(scene.objects)} objects); poll every {POLL} s"
    )
    if iterate:
        result.notes.append(f"the camera moved {CAMERA_STEP} m along x before each A ({moves} moves)")
    result.notes.append(split_note(result, sampling))
    return result


def moved_camera(scene_data: dict[str, Any], step: float) -> dict[str, Any]:
    """The scene with its camera (position and target alike) moved `step` metres along x."""
    camera = scene_data["camera"]
    moved = {
        **camera,
        "position": [camera["position"][0] + step, *camera["position"][1:]],
        "target": [camera["target"][0] + step, *camera["target"][1:]],
    }
    return {**scene_data, "camera": moved}


def split_note(result: PairResult, sampling: list[float]) -> str:
    """How much of each side is Cycles' sampling (the physical limit: the same samples of the same image) and how
    much is everything else (start-up, scene build, kernels, saving, the API and the queue)."""
    if not sampling:
        return "sampling split: Blender's output had no Cycles sample lines"
    sampled = statistics.median(sampling)
    return (
        f"sampling split: Cycles sampled for a median {sampled:.3f} s (its own log, bare runs); everything else"
        f" is {result.median_a - sampled:.3f} s of A and {result.median_b - sampled:.3f} s of B;"
        f" the lowest ratio reachable is sampling alone, {sampled / result.median_b:.2f}x"
    )
