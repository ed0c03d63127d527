"""`invoke status`: every check, its state, and the command that fixes it."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from provisioner.config import Settings
from provisioner.errors import RenderdevError
from provisioner.plan import Check

if TYPE_CHECKING:
    from provisioner.swarm import SwarmRow
    from provisioner.workers import WorkerRow


def collect_checks(settings: Settings, console: Console) -> list[Check]:
    from provisioner.aliases import check_aliases
    from provisioner.dockerapi import docker_client
    from provisioner.secrets import check_secrets

    checks: list[Check] = []
    try:
        client = docker_client()
    except RenderdevError as exc:
        checks.append(Check("docker engine", False, exc.message, exc.hint or "bash scripts/install-host.sh"))
        checks += check_secrets(settings)
        checks += check_aliases(settings)
        return checks
    from provisioner.blender.provision import check_blender
    from provisioner.exposure import check_exposure
    from provisioner.firewall import check_guard
    from provisioner.images import STACK_IMAGES, find_image, plan_images
    from provisioner.services import check_services

    version = client.version().get("Version", "?")
    checks.append(Check("docker engine", True, f"engine {version}"))
    # The worker and registry images are checked once built (`invoke workers`, `invoke deploy` or `invoke images` made
    # them): a stack without container or swarm workers does not need them.
    extra = tuple(name for name in ("worker", "registry") if find_image(client, settings.image(name)) is not None)
    for step in plan_images(client, settings, console, only=STACK_IMAGES + extra):
        checks.append(Check(step.title, not step.needed, step.detail or step.state.value, "invoke images"))
    checks += check_secrets(settings)
    for group in (check_services, check_exposure, check_guard, check_blender):
        try:
            checks += group(client, settings)
        except RenderdevError as exc:
            checks.append(Check(group.__name__.removeprefix("check_"), False, exc.message, exc.hint or ""))
    checks += check_aliases(settings)
    return checks


@dataclass(frozen=True)
class Workers:
    """The render workers rq lists in the stack's Redis, or why they could not be listed."""

    rows: list[WorkerRow]
    note: str | None = None  # e.g. "not listed: the stack's Redis does not answer"
    swarm: list[SwarmRow] | None = None  # the services of the project's swarm stack (invoke deploy), when deployed


def collect_workers(settings: Settings) -> Workers:
    """Every render worker of the stack (provisioner.workers.list_workers); a note instead when Redis cannot be
    asked (the checks above then say why). With them, the project's swarm stack when it is deployed."""
    from provisioner.dockerapi import docker_client
    from provisioner.swarm import swarm_rows
    from provisioner.workers import list_workers

    try:
        client = docker_client()
    except RenderdevError:
        client = None
    try:
        swarm = swarm_rows(client, settings) if client is not None else None
    except Exception:  # noqa: BLE001 - status reports, it never fails on an engine that does not answer
        swarm = None
    try:
        if not settings.secrets_file.exists():
            return Workers([], "not listed: the stack has no secrets yet (invoke services)", swarm)
        return Workers(list_workers(client, settings), swarm=swarm)
    except Exception as exc:  # noqa: BLE001 - status reports, it never fails on a stack that is down
        return Workers([], f"not listed: the stack's Redis does not answer ({type(exc).__name__})", swarm)
    finally:
        if client is not None:
            client.close()


def show_status(
    checks: list[Check],
    console: Console,
    *,
    as_json: bool,
    settings: Settings | None = None,
    workers: Workers | None = None,
) -> bool:
    """Print the checks (and, given the settings, where the stack answers, and the render workers); return True when
    all checks are right (no worker is needed for that)."""
    ok = all(c.ok for c in checks)
    if as_json:
        found: dict[str, object] = {"ok": ok, "checks": [asdict(c) for c in checks]}
        if settings is not None:
            from provisioner.services import stack_urls

            found["urls"] = stack_urls(settings)
        if workers is not None:
            found["workers"] = [w.as_dict() for w in workers.rows]
            if workers.note:
                found["workers_note"] = workers.note
            if workers.swarm is not None:
                found["swarm"] = [asdict(row) for row in workers.swarm]
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return ok
    table = Table(show_header=True, header_style="bold")
    for col in ("check", "state", "", "fix"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, c.state, "[green]ok[/green]" if c.ok else "[red]WRONG[/red]", "" if c.ok else c.fix)
    console.print(table)
    if settings is not None:
        from provisioner.setup import urls_line

        console.print(urls_line(settings), highlight=False)
    if workers is not None:
        show_workers(workers, console)
    console.print("[green]All good.[/green]" if ok else "[red]Something is wrong: run the fix shown.[/red]")
    return ok


def show_workers(workers: Workers, console: Console) -> None:
    """One line per render worker: name, where it runs, queues, state, its job, the age of its last heartbeat; then
    the swarm stack's services, when deployed."""
    if workers.swarm is not None:
        console.print(f"Swarm workers: {len(workers.swarm)} service(s) (invoke deploy)")
        for row in workers.swarm:
            line = f"  {row.service}  {row.running}/{row.desired} running  {row.image}"
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    if workers.note:
        console.print(f"Render workers: {workers.note}", highlight=False)
        return
    if not workers.rows:
        console.print("Render workers: none (start some: invoke workers --replicas 2, or invoke worker)")
        return
    console.print(f"Render workers: {len(workers.rows)}")
    for w in workers.rows:
        age = f"heartbeat {w.heartbeat_age:.0f} s ago" if w.heartbeat_age is not None else "no heartbeat"
        job = f"job {w.job}" if w.job else "no job"
        line = f"  {w.name}  {w.where}  {w.queues}  {w.state}  {job}  {age}"
        console.print(line, highlight=False, markup=False, soft_wrap=True)
