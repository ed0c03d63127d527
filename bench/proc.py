"""Run and time the bench's subprocesses with exactly the environment given (nothing inherited); find
the processes below one (and a free port, re-exported from provisioner.ports). The tests use these too."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from provisioner import proc
from provisioner.config import REPO_ROOT
from provisioner.errors import CommandError
from provisioner.ports import free_port as free_port  # the one free_port; importers move to provisioner.ports
from provisioner.proc import descendants as descendants  # the one process-tree walk

TAIL_LINES = 25


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return proc.tail(text, lines)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path = REPO_ROOT,
    timeout: float = 600.0,
    check: bool = True,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run argv (no shell) with env as its whole environment; return (seconds, the completed process).

    A failure (non-zero exit, timeout) raises CommandError with the command, exit code and output tail."""
    args = [str(a) for a in argv]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(args, -1, tail(out) + f"\n(timed out after {timeout} s)") from exc
    seconds = time.perf_counter() - start
    if check and done.returncode != 0:
        raise CommandError(args, done.returncode, tail((done.stdout or "") + (done.stderr or "")))
    return seconds, done
