"""Pair `api_load`: POST /renders under 32 concurrent clients against a minimal endpoint in the same api image
that does one Postgres INSERT and one Redis LPUSH (bench/api_baseline.py), on the same stack.

A: the stack's API: token check, body and scene validation, the Postgres record, the Redis ledger entry and
the rq job on pq (a preview of the first 5 objects of the example room; no worker runs, the jobs stay queued).
B: `uvicorn api_baseline:app` in a container of the same api image on the stack's network, with the API's
environment and password files: the same JSON body parsed, one INSERT, one LPUSH, 202.
Both: REQUESTS requests from CLIENTS concurrent clients (httpx, one connection each, keep-alive) in this
process; seconds from the first request to the last answer. Throughput = requests / seconds; the ratio is A's
throughput over B's (higher is better). p99 latency of each side goes into the notes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from rq import Queue
from sqlalchemy import text

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, RatioKind, run_pair
from bench.queue import tiny_scene
from bench.stack import BenchStack, Log
from provisioner.credits import read_token
from provisioner.dockerapi import PROJECT_LABEL
from provisioner.ports import free_port
from provisioner.services import api_url
from renderfarm.keys import (
    QueueName,
    attempts_key,
    claim_key,
    limbo_key,
    mq_index_key,
    mq_key,
    queued_key,
    scene_key,
)

NAME = "api_load"
CLIENTS = 32
BASELINE = Path(__file__).with_name("api_baseline.py")


def load(
    url: str, body: dict[str, Any], headers: dict[str, str], requests: int, mjids: list[str]
) -> tuple[float, list[float]]:
    """Seconds for `requests` POSTs from CLIENTS concurrent clients, and each request's latency; the mjids the
    API answered go into `mjids` (the baseline answers none)."""

    async def client(todo: list[int], latencies: list[float]) -> None:
        async with httpx.AsyncClient(headers=headers, timeout=60.0) as http:
            while todo:
                todo.pop()
                start = time.perf_counter()
                resp = await http.post(url, json=body)
                latencies.append(time.perf_counter() - start)
                if resp.status_code != 202:
                    raise BenchError(f"POST {url} answered {resp.status_code}: {resp.text[:200]}")
                answer = resp.json()
                if "mjid" in answer:
                    mjids.append(answer["mjid"])

    async def all_clients() -> tuple[float, list[float]]:
        todo, latencies = list(range(requests)), list[float]()
        start = time.perf_counter()
        await asyncio.gather(*(client(todo, latencies) for _ in range(CLIENTS)))
        return time.perf_counter() - start, latencies

    return asyncio.run(all_clients())


def forget_jobs(r: redis.Redis, mjids: list[str]) -> None:
    """Take A's jobs away again (no worker will ever render them): their rq jobs on pq and their ledger keys, so
    that a later worker on this stack (the memory measurement's) does not find thousands of previews queued, and
    the orphan check does not put them back."""
    Queue(QueueName.PREEMPTIBLE, connection=r).empty()
    with r.pipeline(transaction=False) as pipe:
        for mjid in mjids:
            pipe.delete(mq_key(mjid), scene_key(mjid), attempts_key(mjid), limbo_key(mjid), claim_key(mjid))
            pipe.zrem(mq_index_key(), mjid)
            pipe.srem(queued_key(), mjid)
        pipe.execute()
    mjids.clear()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def start_baseline(stack: BenchStack) -> tuple[Any, str]:
    """A container of the api image running the baseline endpoint beside the API: its environment, password
    files and network; labelled with the project so the bench's clean-up removes it with the stack."""
    settings = stack.settings
    (api,) = stack.client.containers.list(
        filters={"label": [f"{PROJECT_LABEL}={settings.project}", "com.docker.compose.service=api"]}
    )
    mounts = {m["Source"]: {"bind": m["Destination"], "mode": "ro"} for m in api.attrs["Mounts"] if m["Type"] == "bind"}
    mounts[str(BASELINE)] = {"bind": "/bench/api_baseline.py", "mode": "ro"}
    port = free_port()
    container = stack.client.containers.run(
        api.image.id,
        ["uvicorn", "api_baseline:app", "--app-dir", "/bench", "--host", "0.0.0.0", "--port", "8000"],
        detach=True,
        environment=api.attrs["Config"]["Env"],
        network=next(iter(api.attrs["NetworkSettings"]["Networks"])),
        volumes=mounts,
        ports={"8000/tcp": (settings.bind_host, port)},
        labels={PROJECT_LABEL: settings.project, "org.renderdev.bench": NAME},
    )
    url = f"http://{settings.bind_host}:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return container, f"{url}/baseline"
        except httpx.HTTPError:
            pass
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.2)
    logs = container.logs(tail=20).decode(errors="replace")
    container.remove(force=True)
    raise BenchError(f"the baseline endpoint did not answer at {url} within 60 s:\n{logs}")


def measure(stack: BenchStack, *, pairs: int, warmup: int, requests: int, log: Log) -> PairResult:
    settings = stack.settings
    user = stack.seed_user()
    headers = {"Authorization": f"Bearer {read_token(settings, user)}"}
    body = {"user": user, "quality": "preview", "scene": tiny_scene()}
    latencies: dict[str, list[float]] = {"A": [], "B": []}
    container, baseline_url = start_baseline(stack)

    r = stack.redis()

    def side(name: str, url: str) -> float:
        mjids: list[str] = []
        try:
            seconds, each = load(url, body, headers, requests, mjids)
        finally:
            forget_jobs(r, mjids)  # outside the timed part
        latencies[name].extend(each)
        return seconds

    spec = PairSpec(
        name=NAME,
        title=f"POST /renders vs a minimal INSERT + LPUSH endpoint, {CLIENTS} concurrent clients",
        a_label=f"POST /renders x{requests} (preview, 5 objects), {CLIENTS} clients",
        b_label=f"same image: one INSERT + one LPUSH x{requests}, {CLIENTS} clients",
        a=lambda: side("A", f"{api_url(settings)}/renders"),
        b=lambda: side("B", baseline_url),
        goal=Goal(0.7, GoalKind.AT_LEAST),
        ratio=RatioKind.THROUGHPUT,
    )
    try:
        result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
    finally:
        container.remove(force=True)
        r.close()
        engine = stack.engine()
        try:
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS bench_baseline"))
        finally:
            engine.dispose()
    result.notes.append(
        f"requests/s: A {requests / result.median_a:.0f}, B {requests / result.median_b:.0f} (medians); p99 latency:"
        f" A {p99(latencies['A']) * 1000:.0f} ms, B {p99(latencies['B']) * 1000:.0f} ms (warm-up included)"
    )
    return result
