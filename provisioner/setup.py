"""`invoke setup`: images, then services, then Blender, then aliases; each phase planned, shown, applied."""

from __future__ import annotations

import contextlib
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
    applied (the Blender version is read from the running api container). The loopback guard comes
    first in the services phase, so the ports are guarded before compose publishes them.

    A dry run takes no lock: it writes nothing (no state folder, no lock file), so it cannot interleave
    its writes with another setup's; at worst its plan shows what a running setup is about to change.
    """
    from provisioner.aliases import plan_aliases
    from provisioner.blender.provision import plan_blender
    from provisioner.images import STACK_IMAGES, plan_images
    from provisioner.services import plan_ports

    outcome = Outcome()
    lock = contextlib.nullcontext() if dry_run else host_lock(settings.state_dir / "setup.lock", console)
    with lock:
        # First, so that every phase (compose, the guard, the aliases) uses the same ports.
        settings, ports = plan_ports(client, settings)
        phases: list[tuple[str, Callable[[], list[Step]]]] = [
            ("images", lambda: plan_images(client, settings, console, only=STACK_IMAGES)),
            ("services", lambda: services_steps(client, settings, dry_run=dry_run, ports=ports)),
            (
                "blender",
                lambda: plan_blender(
                    client, settings, console, version=version, force=force, insecure=insecure, dry_run=dry_run
                ),
            ),
            ("aliases", lambda: plan_aliases(settings, force=force)),
        ]
        for name, plan in phases:
            outcome.merge(run_steps(console, plan(), dry_run=dry_run, heading=f"Plan: {name}"))
    report(console, outcome, dry_run=dry_run)
    if not dry_run:
        console.print(urls_line(settings), highlight=False)
    return outcome


def urls_line(settings: Settings) -> str:
    """Where the stack answers, for `invoke setup` and `invoke status`."""
    from provisioner.services import stack_urls

    u = stack_urls(settings)
    line = (
        f"Project {settings.project}: page and API {u['api']} (docs {u['docs']});"
        f" Redis port {settings.redis_port}, Postgres port {settings.db_port}"
    )
    if settings.exposed_address:
        from provisioner.exposure import describe

        line += f"; {describe(settings)}"
    return line


def services_steps(
    client: docker.DockerClient, settings: Settings, *, dry_run: bool, ports: Step | None = None
) -> list[Step]:
    """The services phase (of `invoke setup` and `invoke services`): the exposure (an address checked, remembered,
    its certificates: provisioner.exposure), the host ports (a free one for a default that is taken), the loopback
    guard, so the ports are guarded before compose publishes them, then secrets and the stack. `ports`: that step,
    when the caller planned it already (and goes on with its settings)."""
    from provisioner.exposure import plan_exposure
    from provisioner.firewall import plan_guard
    from provisioner.services import plan_ports, plan_services

    if ports is None:
        settings, ports = plan_ports(client, settings)
    exposure = plan_exposure(client, settings)
    return [*exposure, ports, plan_guard(client, settings, dry_run=dry_run), *plan_services(client, settings)]


def teardown(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    volumes: bool = False,
    unlink: bool = False,
    aliases: bool = False,
    loopback_guard: bool = False,
) -> list[str]:
    """`invoke down`: stop the stack (and its volumes), and optionally remove the link, the aliases block
    and (after the stack is gone, so its ports are never left unguarded) the loopback guard's rules.

    The guard's rules are this project's own (provisioner.firewall): removing them leaves every other
    renderdev stack on the host guarded."""
    from provisioner.aliases import remove_aliases
    from provisioner.blender.link import unlink as unlink_blender
    from provisioner.firewall import remove_guard
    from provisioner.services import down

    done: list[str] = []

    def say(*lines: str) -> None:  # each line as soon as it is done: a later failure does not hide it
        for line in lines:
            done.append(line)
            console.print(f"  - {line}", highlight=False)

    with host_lock(settings.state_dir / "setup.lock", console):
        say(down(client, settings, volumes=volumes))
        if unlink:
            removed = unlink_blender(settings)
            say(removed or f"left {settings.blender_link} alone (not a link renderdev made)")
        if aliases:
            say(*(remove_aliases(settings) or ["no aliases block or file to remove"]))
        if loopback_guard:
            say(remove_guard(client, settings))
    return done
