"""Pair `kit`: the test kit's stack ready against `docker compose up -d --wait` of the same images, both from
nothing (a new compose project each time: containers, network and volumes made, Postgres initialised).

A: renderdev.testing.stack.start_stack, what the `renderdev_stack` fixture runs: the image check through the
Docker API (nothing to build: the images are there), the secrets written, then testcontainers' DockerCompose
`up --wait` until redis, db and api are healthy.
B: `docker compose -p P -f compose/compose.yaml up -d --wait` with the variables compose.yaml reads, the
secrets already written (a person running compose by hand has them): the least a person types for the same
three healthy containers.
Removal (compose down, volumes, by label) is outside the timed part on both sides.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.harness import Goal, GoalKind, PairResult, PairSpec, run_pair
from bench.proc import run
from bench.stack import BenchStack, Log
from provisioner.compose import compose_argv, compose_env, detect_driver
from provisioner.dockerapi import remove_by_label
from provisioner.secrets import ensure_secrets
from renderdev.testing.stack import stack_settings, start_stack, stop_stack

NAME = "kit"


def measure(stack: BenchStack, *, pairs: int, warmup: int, log: Log) -> PairResult:
    tag = stack.settings.image_tag

    def kit() -> float:
        with tempfile.TemporaryDirectory(prefix="renderdev-bench-kit-") as tmp:
            settings = stack_settings(Path(tmp), image_tag=tag)
            start = time.perf_counter()
            started = start_stack(stack.client, settings)
            seconds = time.perf_counter() - start
            stop_stack(started)
            remove_by_label(stack.client, settings.project)
            return seconds

    def compose_up() -> float:
        with tempfile.TemporaryDirectory(prefix="renderdev-bench-compose-") as tmp:
            settings = stack_settings(Path(tmp), image_tag=tag)
            ensure_secrets(settings)
            settings.renders_dir.mkdir(parents=True, exist_ok=True)
            env = {**stack.env, **compose_env(settings)}
            argv = compose_argv(detect_driver(), settings, "up", "-d", "--wait")
            try:
                seconds, _ = run(argv, env=env, cwd=settings.compose_dir)
            finally:
                down = compose_argv(detect_driver(), settings, "down", "-v")
                run(down, env=env, cwd=settings.compose_dir, check=False)
                remove_by_label(stack.client, settings.project)
            return seconds

    spec = PairSpec(
        name=NAME,
        title="test kit's stack ready vs docker compose up -d --wait, from nothing",
        a_label="renderdev.testing start_stack (renderdev_stack)",
        b_label="docker compose up -d --wait (new project)",
        a=kit,
        b=compose_up,
        goal=Goal(1.2, GoalKind.AT_MOST),
    )
    return run_pair(spec, pairs=pairs, warmup=warmup, log=log)
