"""`invoke setup`: images, then services, then Blender, then aliases; each phase planned, shown, applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

from provisioner.config import Settings
from provisioner.lock import host_lock
from provisioner.plan import Outcome, Step, report, run_steps

if TYPE_CHECKING:
    import docker


def setup(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    dry_run: bool = False,
    force: bool = False,
    version: str | None = None,
    insecure: bool = False,
) -> Outcome:
    """Bring the whole dev stack to the wanted state. Re-running on a ready machine changes nothing.

    Phases are planned one after the other because each depends on the previous one having been
    applied (the Blender version is read from the running api container).
    """
    from provisioner.aliases import plan_aliases
    from provisioner.blender.install import plan_blender
    from provisioner.images import plan_images
    from provisioner.services import plan_services

    phases: list[tuple[str, Callable[[], list[Step]]]] = [
        ("images", lambda: plan_images(client, settings, console)),
        ("services", lambda: plan_services(client, settings)),
        (
            "blender",
            lambda: plan_blender(
                client, settings, console, version=version, force=force, insecure=insecure, dry_run=dry_run
            ),
        ),
        ("aliases", lambda: plan_aliases(settings, force=force)),
    ]
    outcome = Outcome()
    with host_lock(settings.state_dir / "setup.lock", console):
        for name, plan in phases:
            outcome.merge(run_steps(console, plan(), dry_run=dry_run, heading=f"Plan: {name}"))
    report(console, outcome, dry_run=dry_run)
    return outcome


def teardown(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    volumes: bool = False,
    unlink: bool = False,
    aliases: bool = False,
) -> list[str]:
    """`invoke down`: stop the stack (and its volumes), and optionally remove the link and aliases block."""
    from provisioner.aliases import remove_aliases
    from provisioner.blender.link import unlink as unlink_blender
    from provisioner.services import down

    done: list[str] = []
    with host_lock(settings.state_dir / "setup.lock", console):
        done.append(down(client, settings, volumes=volumes))
        if unlink:
            removed = unlink_blender(settings)
            done.append(removed or f"left {settings.blender_link} alone (not a link renderdev made)")
        if aliases:
            done += remove_aliases(settings) or ["no aliases block or file to remove"]
    for line in done:
        console.print(f"  - {line}", highlight=False)
    return done
