"""The one subprocess helper: logs the command, scrubs the environment, turns failure into CommandError."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from provisioner.errors import CommandError

log = logging.getLogger("renderdev.proc")

# Variables that change how child tools behave in ways we never want (e.g. a user's PYTHONPATH
# leaking into Blender's bundled Python, or a pager swallowing compose output).
_SCRUB = ("PYTHONPATH", "PYTHONHOME", "PAGER", "GIT_PAGER", "LESS")
TAIL_LINES = 20


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    if extra:
        env.update(extra)
    return env


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    check: bool = True,
    capture: bool = True,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell). On failure raise CommandError with the stderr tail."""
    args = [str(a) for a in argv]
    log.debug("run: %s", " ".join(args))
    try:
        proc = subprocess.run(
            args,
            env=clean_env(env),
            cwd=cwd,
            timeout=timeout,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: command not found", hint=hint) from exc
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(args, -1, tail(err) + f"\n(timed out after {timeout} s)", hint=hint) from exc
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, tail((proc.stderr or "") or (proc.stdout or "")), hint=hint)
    return proc


# ---------------------------------------------------------------- process trees (workers, Blender, the bench)


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc (a Blender in its own session is still a child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def alive(pid: int) -> bool:
    """True while pid runs (a zombie, which has ended but was not yet reaped, is not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> list[int]:
    """Send sig to pid and every process below it (found first, so a child re-parented meanwhile is not
    missed); return the pids signalled."""
    pids = descendants(pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return pids
