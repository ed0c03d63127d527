"""`invoke logs` against a real stack (the testcontainers kit's): sources, order, --since, secrets masked."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from provisioner.config import REPO_ROOT
from provisioner.logs import MASK, parse_stamp, worker_log_path
from provisioner.secrets import read_secrets
from renderdev.testing import RenderStack, WorkerProcess
from renderdev.testing.worker import worker_environment

pytestmark = [pytest.mark.integration]


def invoke(stack: RenderStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env=worker_environment(stack.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def sources(out: str) -> set[str]:
    return {line.split("|", 1)[0].strip() for line in out.splitlines() if "|" in line}


def test_logs_interleave_the_services_and_the_workers_by_time_with_secrets_masked(renderdev_stack: RenderStack) -> None:
    password = read_secrets(renderdev_stack.settings)["redis_password"]
    log = worker_log_path(renderdev_stack.settings, "host-preemptible-1")
    log.parent.mkdir(parents=True, exist_ok=True)
    early = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    log.write_text(f"{early} INFO rq.worker: connected with password {password}\n")

    done = invoke(renderdev_stack, "logs")
    assert done.returncode == 0, done.stderr
    assert {"redis", "db", "api", "host-preemptible-1"} <= sources(done.stdout)
    assert password not in done.stdout and MASK in done.stdout
    first = done.stdout.splitlines()[0]
    assert first.startswith("host-preemptible-1") and "connected with password" in first  # the oldest line

    only_api = invoke(renderdev_stack, "logs", "--service", "api")
    assert sources(only_api.stdout) == {"api"}


def test_since_leaves_out_older_lines_and_a_bad_value_is_refused(renderdev_stack: RenderStack) -> None:
    time.sleep(1.5)
    recent = invoke(renderdev_stack, "logs", "--service", "redis,db", "--since", "1s")
    assert recent.returncode == 0, recent.stderr
    assert len(recent.stdout.splitlines()) < len(
        invoke(renderdev_stack, "logs", "--service", "redis,db").stdout.splitlines()
    )
    bad = invoke(renderdev_stack, "logs", "--since", "yesterday")
    assert bad.returncode == 1 and "--since 'yesterday'" in bad.stderr


def test_docker_and_worker_timestamps_parse_alike() -> None:
    at, rest = parse_stamp("2026-12-01T10:00:00.123456789Z ready")
    assert rest == "ready" and at == datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    at2, _ = parse_stamp("2026-12-01T10:00:00.200000+00:00 INFO x")
    assert at2 is not None and at is not None and at2 > at


def test_a_running_workers_log_is_in_the_project_state_folder_and_in_invoke_logs(
    renderdev_stack: RenderStack, render_worker: WorkerProcess
) -> None:
    folder = renderdev_stack.settings.project_state_dir / "logs"
    files = [p for p in folder.glob("worker-*.log") if p.stem.endswith(f"-{render_worker.pid}")]
    assert len(files) == 1, sorted(folder.iterdir())
    done = invoke(renderdev_stack, "logs", "--service", "redis", "--workers")
    source = files[0].stem.removeprefix("worker-")
    lines = [line for line in done.stdout.splitlines() if line.startswith(source)]
    assert any("Listening on" in line for line in lines), done.stdout[-3000:]
    assert "Listening on" in render_worker.output()  # the console keeps rq's own output
