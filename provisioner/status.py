"""`invoke status`: every check, its state, and the command that fixes it."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from provisioner.config import Settings
from provisioner.errors import RenderdevError
from provisioner.plan import Check


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
    from provisioner.firewall import check_guard
    from provisioner.images import plan_images
    from provisioner.services import check_services

    version = client.version().get("Version", "?")
    checks.append(Check("docker engine", True, f"engine {version}"))
    for step in plan_images(client, settings, console):
        checks.append(Check(step.title, not step.needed, step.detail or step.state.value, "invoke images"))
    checks += check_secrets(settings)
    for group in (check_services, check_guard, check_blender):
        try:
            checks += group(client, settings)
        except RenderdevError as exc:
            checks.append(Check(group.__name__.removeprefix("check_"), False, exc.message, exc.hint or ""))
    checks += check_aliases(settings)
    return checks


def show_status(checks: list[Check], console: Console, *, as_json: bool, settings: Settings | None = None) -> bool:
    """Print the checks (and, given the settings, where the stack answers); return True when all are right."""
    ok = all(c.ok for c in checks)
    if as_json:
        found: dict[str, object] = {"ok": ok, "checks": [asdict(c) for c in checks]}
        if settings is not None:
            from provisioner.services import stack_urls

            found["urls"] = stack_urls(settings)
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
    console.print("[green]All good.[/green]" if ok else "[red]Something is wrong: run the fix shown.[/red]")
    return ok
