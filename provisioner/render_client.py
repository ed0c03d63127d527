"""`invoke render`: the smoke test a developer runs after setup. Submit through the API (as the user whose
API token `invoke seed-credits` saved in the state folder), wait with a spinner showing the state, download
the PNG, and say how long each stage took."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from provisioner.config import Settings
from provisioner.credits import read_token
from provisioner.errors import ConfigError, RenderdevError
from provisioner.fsops import atomic_write_bytes

POLL = 0.25


def load_scene(path: Path | None) -> dict[str, Any]:
    if path is None:
        from renderfarm.examples import example_scene_path

        path = example_scene_path()
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read scene file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"scene file {path} is not JSON: {exc}") from exc
    return data


def _refusal(resp: httpx.Response, user: str) -> RenderdevError:
    try:
        body = resp.json()
    except ValueError:
        body = {"detail": resp.text[:300]}
    detail = body.get("detail")
    if resp.status_code == 422 and isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    hints = {
        401: f"the token in the state folder is not the API's: invoke seed-credits --user {user} --rotate-token",
        402: f"invoke seed-credits --user {user} --amount 100",
        403: f"render as the token's user: invoke render --user EMAIL (not {user})",
        404: f"invoke seed-credits --user {user} --amount 100",
        503: "invoke status",
    }
    return RenderdevError(
        f"the API refused the render ({resp.status_code}): {detail}", hint=hints.get(resp.status_code)
    )


def render(
    settings: Settings,
    console: Console,
    *,
    quality: str,
    scene_path: Path | None,
    user: str,
    out: Path | None,
    timeout: float,
    tiles: int = 1,
) -> Path:
    from provisioner.services import api_url

    scene = load_scene(scene_path)
    token = read_token(settings, user)
    base = api_url(settings)
    stages: dict[str, float] = {}
    try:
        with httpx.Client(base_url=base, timeout=15, headers={"Authorization": f"Bearer {token}"}) as http:
            t0 = time.monotonic()
            resp = http.post("/renders", json={"quality": quality, "scene": scene, "tiles": tiles})
            if resp.status_code != 202:
                raise _refusal(resp, user)
            mjid = resp.json()["mjid"]
            stages["submit"] = time.monotonic() - t0
            job = _wait(http, console, mjid, stages, timeout)
            if job["state"] == "failed":
                raise RenderdevError(f"render {mjid} failed: {job.get('error')}")
            t1 = time.monotonic()
            img = http.get(f"/renders/{mjid}/image")
            if img.status_code != 200 or img.headers.get("content-type") != "image/png":
                raise RenderdevError(f"could not download the image of {mjid}: {img.status_code} {img.text[:200]}")
            target = out or Path.cwd() / f"render-{mjid}.png"
            atomic_write_bytes(target, img.content)
            stages["download"] = time.monotonic() - t1
    except httpx.TransportError as exc:
        raise RenderdevError(f"the API at {base} does not answer ({exc})", hint="invoke services") from exc
    console.print(f"{quality} render {mjid}{f' in {tiles} tiles' if tiles > 1 else ''}: {target}")
    console.print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
    return target


def _wait(http: httpx.Client, console: Console, mjid: str, stages: dict[str, float], timeout: float) -> dict[str, Any]:
    start = last = time.monotonic()
    state = "queued"
    with console.status(f"{mjid}: queued") as spinner:
        while True:
            resp = http.get(f"/renders/{mjid}")
            now = time.monotonic()
            if resp.status_code == 503 and now - start <= timeout:
                time.sleep(POLL)  # a service is restarting: the job is still there, keep asking
                continue
            if resp.status_code != 200:
                raise RenderdevError(f"cannot follow render {mjid} ({resp.status_code}): {resp.text[:300]}")
            job: dict[str, Any] = resp.json()
            if job["state"] != state:
                stages["queued" if state == "queued" else "render"] = now - last
                state, last = job["state"], now
                spinner.update(f"{mjid}: {state} (queue {job['queue']}, attempt {job['attempts']})")
            if state in ("finished", "failed"):
                return job
            if now - start > timeout:
                raise RenderdevError(
                    f"render {mjid} still {state} after {timeout:.0f} s",
                    hint="is a worker running? run_preemptible_render_worker (or: invoke worker)",
                )
            time.sleep(POLL)
