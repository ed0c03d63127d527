"""renderdev's tasks. Each one parses its options and calls one function of `provisioner/`.

Imports are lazy so that `invoke --list` stays fast. Failures a user can fix exit 1 with a short
message; set RENDERDEV_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from invoke import Context, Exit, task

F = TypeVar("F", bound=Callable[..., Any])


def edge(fn: F) -> F:
    """The one place where renderdev's root exception is caught and turned into exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from provisioner.errors import RenderdevError

        try:
            return fn(*args, **kwargs)
        except RenderdevError as exc:
            if os.environ.get("RENDERDEV_DEBUG"):
                traceback.print_exc()
            raise Exit(f"renderdev: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("renderdev: interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


def _settings(**overrides: Any) -> Any:
    from provisioner.config import load_settings

    return load_settings(**overrides)


def _console() -> Any:
    from provisioner.console import make_console

    return make_console()


def _client() -> Any:
    from provisioner.dockerapi import docker_client

    return docker_client()


BLENDER_HELP = {
    "api_container": "api container to read the Blender version from (default: the stack's api service)",
    "version": "Blender version to install, e.g. 3.4.1 (skips reading it from the api container)",
    "versions_file": "versions file with URLs and sha256 (default: blender_versions.yaml)",
    "mirror": "mirror URL or folder laid out like download.blender.org (release/BlenderX.Y/...)",
    "source": "where to get Blender: auto|installed|mirror|official|apt (default auto: in that order)",
    "install_root": "folder holding one sub-folder per installed version",
    "link": "symlink to make to the installed binary (default /usr/bin/blender)",
    "force": "replace a file or link renderdev did not make (it is moved aside, or dpkg-diverted)",
    "insecure": "install even when the sha256 cannot be checked (loudly)",
    "dry_run": "print the plan and change nothing",
}
LIVE_HELP = "run the api on the working tree's renderfarm/ with reload (no image rebuild); without it: the image"
EXPOSE_HELP = (
    "also reach the stack on this IPv4 address of the host, TLS only (https API, Redis TLS); remembered;"
    " 'none' withdraws it"
)


def _blender_settings(
    api_container: str | None,
    versions_file: str | None,
    mirror: str | None,
    source: str | None,
    install_root: str | None,
    link: str | None,
    **more: Any,
) -> Any:
    return _settings(
        **more,
        api_container=api_container,
        blender_versions_file=versions_file,
        blender_mirror=mirror,
        blender_source=source,
        blender_install_root=install_root,
        blender_link=link,
    )


@task(help={**BLENDER_HELP, "live": LIVE_HELP, "expose": EXPOSE_HELP})
@edge
def setup(
    c: Context,
    api_container: str | None = None,
    version: str | None = None,
    versions_file: str | None = None,
    mirror: str | None = None,
    source: str | None = None,
    install_root: str | None = None,
    link: str | None = None,
    force: bool = False,
    insecure: bool = False,
    dry_run: bool = False,
    live: bool = False,
    expose: str | None = None,
) -> None:
    """Bring up images, services, the host Blender and the shell aliases (plan first, then apply)."""
    from provisioner.setup import setup as run_setup

    settings = _blender_settings(
        api_container, versions_file, mirror, source, install_root, link, live=live or None, expose=expose
    )
    run_setup(_client(), settings, _console(), dry_run=dry_run, force=force, version=version, insecure=insecure)


@task(help={"dry_run": BLENDER_HELP["dry_run"]})
@edge
def images(c: Context, dry_run: bool = False) -> None:
    """Build the base image (pulled, or bootstrapped from Debian) and the redis, db, api and worker images."""
    from provisioner.images import plan_images
    from provisioner.plan import report, run_steps

    console = _console()
    steps = plan_images(_client(), _settings(), console)
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: images"), dry_run=dry_run)


@task(help={"live": LIVE_HELP, "expose": EXPOSE_HELP, "dry_run": BLENDER_HELP["dry_run"]})
@edge
def services(c: Context, live: bool = False, expose: str | None = None, dry_run: bool = False) -> None:
    """Guard the loopback ports (engines before 28), start redis, db and api with compose, wait until healthy."""
    from provisioner.plan import report, run_steps
    from provisioner.setup import services_steps

    console = _console()
    steps = services_steps(_client(), _settings(live=live or None, expose=expose), dry_run=dry_run)
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: services"), dry_run=dry_run)


@task(help=BLENDER_HELP)
@edge
def blender(
    c: Context,
    api_container: str | None = None,
    version: str | None = None,
    versions_file: str | None = None,
    mirror: str | None = None,
    source: str | None = None,
    install_root: str | None = None,
    link: str | None = None,
    force: bool = False,
    insecure: bool = False,
    dry_run: bool = False,
) -> None:
    """Install the Blender version the api container declares, and link it (default /usr/bin/blender)."""
    from provisioner.blender.provision import plan_blender
    from provisioner.plan import report, run_steps

    console = _console()
    settings = _blender_settings(api_container, versions_file, mirror, source, install_root, link)
    client = None if version else _client()
    steps = plan_blender(client, settings, console, version=version, force=force, insecure=insecure, dry_run=dry_run)
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: blender"), dry_run=dry_run)


@task(help={"force": "replace an aliases file renderdev did not write", "dry_run": BLENDER_HELP["dry_run"]})
@edge
def aliases(c: Context, force: bool = False, dry_run: bool = False) -> None:
    """Write the shell aliases file and one marked `source` block in ~/.bashrc and ~/.zshrc."""
    from provisioner.aliases import plan_aliases
    from provisioner.plan import report, run_steps

    console = _console()
    steps = plan_aliases(_settings(), force=force)
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: aliases"), dry_run=dry_run)


@task(
    help={
        "volumes": "also delete the stack's named volumes (Redis and Postgres data)",
        "unlink": "also remove the Blender link, if renderdev made it",
        "remove_aliases": "also remove the aliases file and the source block from the rc files",
        "all": "all of the above, and this project's loopback guard (iptables rules)",
    }
)
@edge
def down(
    c: Context, volumes: bool = False, unlink: bool = False, remove_aliases: bool = False, all: bool = False
) -> None:
    """Stop and remove the stack's containers; optionally its volumes, the link and the aliases."""
    from provisioner.setup import teardown

    teardown(
        _client(),
        _settings(),
        _console(),
        volumes=volumes or all,
        unlink=unlink or all,
        aliases=remove_aliases or all,
        loopback_guard=all,
    )


@task(help={"json": "print the checks as JSON"})
@edge
def status(c: Context, json: bool = False) -> None:
    """Show each check (engine, images, services, Blender, aliases), its state and the fix; exit 1 if wrong; then
    the render workers rq knows (host and container)."""
    from provisioner.status import collect_checks, collect_workers, show_status

    console, settings = _console(), _settings()
    checks, workers = collect_checks(settings, console), collect_workers(settings)
    if not show_status(checks, console, as_json=json, settings=settings, workers=workers):
        raise Exit(code=1)


@task(
    help={
        "queues": "comma-separated queues: pq (preemptible), sq (standard); default both, pq first",
        "burst": "exit when the queues are empty",
        "reload": "start a new worker when a .py file of renderfarm/ changes (the job in hand finishes first)",
        "config": "a worker file (invoke worker-config): reach that stack through its API only, from any host",
    }
)
@edge
def worker(
    c: Context, queues: str = "pq,sq", burst: bool = False, reload: bool = False, config: str | None = None
) -> None:
    """Run a render worker (rq) on this host against the stack's Redis."""
    from pathlib import Path

    from provisioner.errors import ConfigError
    from provisioner.worker import reload_worker, run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()]
    if reload and burst:
        raise ConfigError("--reload with --burst: a burst worker ends when its queues are empty", hint="pick one")
    if reload and config:
        raise ConfigError("--reload with --config: --reload restarts the stack's own host worker", hint="pick one")
    if reload:
        reload_worker(_settings(), names, _console())
    else:
        run_worker(_settings(), names, burst=burst, config=Path(config) if config else None)


@task(
    help={
        "name": "the credential's name (lowercase letters, digits, '-'): one per host or group of workers",
        "output": "where to write the worker file (default: the state folder's workers/<name>.json)",
        "rotate": "new token and Redis password (the old file stops working at once)",
        "address": "loopback (127.0.0.1, plain) or exposed (TLS, with the CA); default: exposed when exposed",
        "dry_run": BLENDER_HELP["dry_run"],
    }
)
@edge
def worker_config(
    c: Context,
    name: str = "",
    output: str | None = None,
    rotate: bool = False,
    address: str | None = None,
    dry_run: bool = False,
) -> None:
    """Write the one file a render worker on another host needs (API URL, worker token, its Redis user; 0600)."""
    from pathlib import Path

    from provisioner.worker_access import worker_config as make

    out = Path(output) if output else None
    make(_settings(), _console(), name=name, output=out, rotate=rotate, dry_run=dry_run, address=address)


@task(help={"name": "the credential to revoke", "dry_run": BLENDER_HELP["dry_run"]})
@edge
def worker_revoke(c: Context, name: str = "", dry_run: bool = False) -> None:
    """Revoke a worker credential: its token is refused and its Redis connections closed, at once."""
    from provisioner.worker_access import worker_revoke as revoke

    revoke(_settings(), _console(), name=name, dry_run=dry_run)


@task(
    help={
        "replicas": "how many worker containers to run, 0 to 32 (0 stops them: their jobs go back on sq)",
        "queues": "comma-separated queues they serve: pq (preemptible), sq (standard); default both, pq first",
        "dry_run": BLENDER_HELP["dry_run"],
    }
)
@edge
def workers(c: Context, replicas: str | None = None, queues: str = "pq,sq", dry_run: bool = False) -> None:
    """Scale the render workers in containers (compose service `worker`, Blender inside) to N on this host."""
    from provisioner.workers import scale_workers

    scale_workers(_client(), _settings(), _console(), replicas=replicas, queues=queues, dry_run=dry_run)


@task(
    help={
        "preemptible": "render workers serving pq, on nodes labelled renderdev.preemptible=true (default 0)",
        "standard": "render workers serving sq, on the other nodes (default 0)",
        "config": "the worker file to run them with (default: credential `swarm`, made as invoke worker-config does)",
        "init_swarm": "on a single-node host whose engine is in no swarm: docker swarm init first",
        "remove": "remove the stack (its workers drain), its registry volume here and its secrets",
        "dry_run": BLENDER_HELP["dry_run"],
    }
)
@edge
def deploy(
    c: Context,
    preemptible: str | None = None,
    standard: str | None = None,
    config: str | None = None,
    init_swarm: bool = False,
    remove: bool = False,
    dry_run: bool = False,
) -> None:
    """Render workers on a Docker swarm: the stack <project>-swarm (docker stack deploy, compose/swarm.yaml)."""
    from pathlib import Path

    from provisioner.swarm import deploy as run_deploy

    run_deploy(
        _client(),
        _settings(),
        _console(),
        preemptible=preemptible,
        standard=standard,
        config=Path(config) if config else None,
        init_swarm=init_swarm,
        remove=remove,
        dry_run=dry_run,
    )


@task(
    help={
        "user": "the user's email (created if new, with an API token printed once and saved in the state folder)",
        "amount": "credits to add, a positive whole number (default 100; none with only --rotate-token)",
        "database_url": "another database than the stack's (refused unless every address is local, or --force)",
        "force": "allow a database that is not the local dev stack (its schema is not migrated: see --migrate)",
        "rotate_token": "replace the user's API token (the old one stops working at once); prints the new one",
        "migrate": "upgrade the schema of a database reached with --force (the stack's is always upgraded)",
    }
)
@edge
def seed_credits(
    c: Context,
    user: str = "dev@example.com",
    amount: str | None = None,
    database_url: str | None = None,
    force: bool = False,
    rotate_token: bool = False,
    migrate: bool = False,
) -> None:
    """Give a dev user credits (and, the first time, an API token) so renders can be requested."""
    from provisioner.credits import seed_credits as seed

    if amount is None and not rotate_token:
        amount = "100"
    seed(
        _settings(database_url=database_url),
        _console(),
        user=user,
        amount=amount,
        force=force,
        rotate_token=rotate_token,
        migrate=migrate,
    )


@task(
    help={
        "quality": "preview (free, 640x360) or hd (1920x1080, costs credits)",
        "scene": "scene JSON file (default: the furnished-room example)",
        "user": "the user's email (their API token is read from the state folder: invoke seed-credits makes it)",
        "out": "where to write the PNG (default ./render-<mjid>.png)",
        "timeout": "seconds to wait for a worker to finish it",
        "tiles": "hd only: split it into this many tiles, each a job any worker takes (default 1: one job)",
    }
)
@edge
def render(
    c: Context,
    quality: str = "preview",
    scene: str | None = None,
    user: str = "dev@example.com",
    out: str | None = None,
    timeout: float = 900.0,
    tiles: int = 1,
) -> None:
    """Submit a render through the API, wait for a worker, download the image, print the stage timings."""
    from pathlib import Path

    from provisioner.render_client import render as submit

    submit(
        _settings(),
        _console(),
        quality=quality,
        scene_path=Path(scene) if scene else None,
        user=user,
        out=Path(out) if out else None,
        timeout=timeout,
        tiles=tiles,
    )


@task(
    iterable=["only"],
    help={
        "quick": "one pair of each, no cold setup (CI: proves the bench runs; never fails on a missed goal)",
        "pairs": "interleaved A/B pairs per measurement, after one warm-up pair (default 5)",
        "only": "run only these: setup, preview, install, queue, memory, cold (repeatable, or a comma list)",
        "out": "where to write the JSON results (default bench/results.json)",
        "check": "exit 1 when a goal is missed (a full run only; the quick run only reports)",
    },
)
@edge
def bench(
    c: Context,
    quick: bool = False,
    pairs: int = 5,
    only: list[str] | None = None,
    out: str = "bench/results.json",
    check: bool = False,
) -> None:
    """Benchmark against a throw-away stack: each pair interleaved, medians, ratios, goals (see bench/)."""
    from pathlib import Path

    from bench.run import run_bench

    run_bench(quick=quick, pairs=pairs, only=only or [], out=Path(out), check=check)


@task(
    help={
        "name": "the snapshot's name (default: the current time, e.g. 20261201-104800)",
        "list": "list this project's snapshots instead",
        "dry_run": BLENDER_HELP["dry_run"],
    }
)
@edge
def snapshot(c: Context, name: str | None = None, list: bool = False, dry_run: bool = False) -> None:
    """Save the stack's database (pg_dump) and Redis (an RDB) under the project's state folder."""
    from provisioner.snapshot import take_snapshot

    take_snapshot(_client(), _settings(), _console(), name=name, list_only=list, dry_run=dry_run)


@task(help={"name": "the snapshot to put back (invoke snapshot --list)", "dry_run": BLENDER_HELP["dry_run"]})
@edge
def restore(c: Context, name: str, dry_run: bool = False) -> None:
    """Put the database and Redis back as they were at a snapshot (refused while render workers are connected)."""
    from provisioner.snapshot import restore_snapshot

    restore_snapshot(_client(), _settings(), _console(), name=name, dry_run=dry_run)


@task(help={"command": "run this command (sh -c) instead of an interactive shell; its exit code is the task's"})
@edge
def shell(c: Context, service: str, command: str | None = None) -> None:
    """A shell (or one command) in redis, db or api, as the service's own user."""
    from provisioner.stacks import shell as enter

    enter(_client(), _settings(), service, command)


@task
@edge
def ls(c: Context) -> None:
    """Every renderdev stack on this host: its project, state, ports and URLs."""
    from provisioner.stacks import show_stacks

    show_stacks(_client(), _console())


@task(
    iterable=["service"],
    help={
        "service": "redis, db or api (repeatable, or a comma list); default: all three and the host workers",
        "follow": "keep printing new lines until Ctrl+C",
        "since": "only lines since then: 30s, 10m, 2h, 1d or an ISO time",
        "workers": "also the host workers' logs (always, when no service is named)",
    },
)
@edge
def logs(
    c: Context, service: list[str] | None = None, follow: bool = False, since: str | None = None, workers: bool = False
) -> None:
    """The stack's container logs and the host workers' logs, by time, each line prefixed, secrets masked."""
    from provisioner.logs import show_logs

    names = [s.strip() for item in service or [] for s in item.split(",") if s.strip()]
    show_logs(_client(), _settings(), _console(), services=names, follow=follow, since=since, workers=workers)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run tasks with: invoke --list")
