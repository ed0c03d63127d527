"""Pair 1: a warm `invoke setup` vs a no-op `docker compose up -d --wait`, on the same ready stack.

A: `python -m invoke setup` in a subprocess, with the bench stack's RENDERDEV_* environment: a developer's
re-run on a ready machine (interpreter start, imports, the checks through the Docker API and the files).
B: `docker compose -p P -f compose/compose.yaml up -d --wait` with the variables compose.yaml reads
(provisioner.compose.compose_env), i.e. what compose alone takes to find nothing to do.
A run that changed something (a rebuilt image because the sources changed meanwhile, a recreated
container) is not a warm run: the pair is discarded and run again.
"""

from __future__ import annotations

from bench.harness import Discard, Goal, GoalKind, PairResult, PairSpec, run_pair
from bench.proc import run
from bench.stack import BenchStack, Log
from provisioner.compose import compose_argv, compose_env, detect_driver

NAME = "setup"
NOTHING_CHANGED = "Nothing changed"
COMPOSE_CHANGES = ("Recreate", "Creating", "Created", "Starting", "Started")


def measure(stack: BenchStack, *, pairs: int, warmup: int, log: Log) -> PairResult:
    settings = stack.settings
    up = compose_argv(detect_driver(), settings, "up", "-d", "--wait")
    up_env = {**stack.env, **compose_env(settings)}

    def warm_setup() -> float:
        seconds, done = stack.invoke("setup")
        if NOTHING_CHANGED not in done.stdout:
            changed = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("- ")]
            raise Discard(f"invoke setup changed something: {'; '.join(changed)[:300]}")
        return seconds

    def compose_up() -> float:
        seconds, done = run(up, env=up_env, cwd=settings.compose_dir)
        said = done.stdout + done.stderr
        if any(word in said for word in COMPOSE_CHANGES):
            raise Discard(f"compose up changed something: {' '.join(said.split())[:300]}")
        return seconds

    spec = PairSpec(
        name=NAME,
        title="warm invoke setup vs docker compose up -d --wait (no-op)",
        a_label="python -m invoke setup (warm)",
        b_label="docker compose up -d --wait (no-op)",
        a=warm_setup,
        b=compose_up,
        goal=Goal(1.0, GoalKind.AT_MOST),
    )
    return run_pair(spec, pairs=pairs, warmup=warmup, log=log)
