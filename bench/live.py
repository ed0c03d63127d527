"""Pair `live`: from saving a change in renderfarm/core.py to the API answering with it, against restarting the
api container of the built image.

A: a stack in live mode (`invoke setup --live`: compose/live.yaml mounts a copy of the working tree's
renderfarm/ over the installed package, uvicorn reloads). Each run saves core.py with a new API title and
times until /openapi.json answers with that title.
B: `docker compose restart api` on the bench stack (the built image), timed until /openapi.json answers
again: the fastest a person gets the api to run code without live mode, and still without the change (which
would need an image rebuild on top).
Both sides poll the same endpoint every 50 ms.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, run_pair
from bench.proc import run
from bench.stack import BenchStack, Log
from provisioner.compose import compose_argv, compose_env, detect_driver
from provisioner.config import REPO_ROOT
from provisioner.dockerapi import remove_by_label
from provisioner.services import api_url
from renderdev.testing.stack import stack_settings, start_stack, stop_stack

NAME = "live"
TITLE = 'title="renderfarm",'
POLL = 0.05
TIMEOUT = 120.0


def _answers(url: str, title: str | None) -> bool:
    try:
        got = httpx.get(f"{url}/openapi.json", timeout=2).json()["info"]["title"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return title is None or got == title


def _until(url: str, title: str | None, start: float) -> float:
    while not _answers(url, title):
        if time.perf_counter() - start > TIMEOUT:
            raise BenchError(f"the api at {url} did not answer{f' with {title!r}' if title else ''} in {TIMEOUT:.0f} s")
        time.sleep(POLL)
    return time.perf_counter() - start


def measure(stack: BenchStack, *, pairs: int, warmup: int, log: Log) -> PairResult:
    with tempfile.TemporaryDirectory(prefix="renderdev-bench-live-") as tmp:
        source = Path(tmp) / "renderfarm"
        shutil.copytree(REPO_ROOT / "renderfarm", source, ignore=shutil.ignore_patterns("__pycache__"))
        core = source / "core.py"
        original = core.read_text()
        if TITLE not in original:
            raise BenchError(f"renderfarm/core.py no longer has {TITLE!r}: the live pair needs a title to change")
        settings = stack_settings(Path(tmp), image_tag=stack.settings.image_tag, live=True, live_source=source)
        log(f"bench: live-mode stack {settings.project} on {source}")
        live = start_stack(stack.client, settings)
        try:
            live_url, built_url = api_url(settings), api_url(stack.settings)
            edits = itertools.count(1)
            restart = compose_argv(detect_driver(), stack.settings, "restart", "api")
            restart_env = {**stack.env, **compose_env(stack.settings)}

            def save_change() -> float:
                title = f"renderfarm (edit {next(edits)})"
                start = time.perf_counter()
                core.write_text(original.replace(TITLE, f"title={title!r},"))
                return _until(live_url, title, start)

            def restart_api() -> float:
                start = time.perf_counter()
                run(restart, env=restart_env, cwd=stack.settings.compose_dir)
                return _until(built_url, None, start)

            spec = PairSpec(
                name=NAME,
                title="saved change answered by the live api vs docker compose restart api",
                a_label="save renderfarm/core.py (invoke setup --live)",
                b_label="docker compose restart api (built image)",
                a=save_change,
                b=restart_api,
                goal=Goal(0.5, GoalKind.AT_MOST),
            )
            return run_pair(spec, pairs=pairs, warmup=warmup, log=log)
        finally:
            stop_stack(live)
            remove_by_label(stack.client, settings.project)
