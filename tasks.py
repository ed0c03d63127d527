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


def _blender_settings(
    api_container: str | None,
    versions_file: str | None,
    mirror: str | None,
    source: str | None,
    install_root: str | None,
    link: str | None,
) -> Any:
    return _settings(
        api_container=api_container,
        blender_versions_file=versions_file,
        blender_mirror=mirror,
        blender_source=source,
        blender_install_root=install_root,
        blender_link=link,
    )


@task(help=BLENDER_HELP)
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
) -> None:
    """Bring up images, services, the host Blender and the shell aliases (plan first, then apply)."""
    from provisioner.setup import setup as run_setup

    settings = _blender_settings(api_container, versions_file, mirror, source, install_root, link)
    run_setup(_client(), settings, _console(), dry_run=dry_run, force=force, version=version, insecure=insecure)


@task(help={"dry_run": BLENDER_HELP["dry_run"]})
@edge
def images(c: Context, dry_run: bool = False) -> None:
    """Build the base image (pulled, or bootstrapped from Debian) and the redis, db and api images."""
    from provisioner.images import plan_images
    from provisioner.plan import report, run_steps

    console = _console()
    steps = plan_images(_client(), _settings(), console)
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: images"), dry_run=dry_run)


@task(help={"dry_run": BLENDER_HELP["dry_run"]})
@edge
def services(c: Context, dry_run: bool = False) -> None:
    """Start redis, db and api with compose and wait until each is healthy."""
    from provisioner.plan import report, run_steps
    from provisioner.services import plan_services

    console = _console()
    steps = plan_services(_client(), _settings())
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
    from provisioner.blender.install import plan_blender
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
        "all": "all of the above",
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
    )


@task(help={"json": "print the checks as JSON"})
@edge
def status(c: Context, json: bool = False) -> None:
    """Show each check (engine, images, services, Blender, aliases), its state and the fix; exit 1 if wrong."""
    from provisioner.status import collect_checks, show_status

    console = _console()
    if not show_status(collect_checks(_settings(), console), console, as_json=json):
        raise Exit(code=1)


@task(
    help={
        "queues": "comma-separated queues: pq (preemptible), sq (standard); default both, pq first",
        "burst": "exit when the queues are empty",
    }
)
@edge
def worker(c: Context, queues: str = "pq,sq", burst: bool = False) -> None:
    """Run a render worker (rq) on this host against the stack's Redis."""
    from provisioner.worker import run_worker

    run_worker(_settings(), [q.strip() for q in queues.split(",") if q.strip()], burst=burst)


@task(
    help={
        "user": "the user's email (created if new)",
        "amount": "credits to add (a positive whole number)",
        "database_url": "another database than the stack's (refused unless local, or with --force)",
        "force": "allow a database that is not the local dev stack",
    }
)
@edge
def seed_credits(
    c: Context, user: str = "dev@example.com", amount: str = "100", database_url: str | None = None, force: bool = False
) -> None:
    """Give a dev user credits so HD renders can be requested; prints the new balance."""
    from provisioner.credits import seed_credits as seed

    seed(_settings(database_url=database_url), _console(), user=user, amount=amount, force=force)


@task(
    help={
        "quality": "preview (free, 640x360) or hd (1920x1080, costs credits)",
        "scene": "scene JSON file (default: the furnished-room example)",
        "user": "the user's email",
        "out": "where to write the PNG (default ./render-<mjid>.png)",
        "timeout": "seconds to wait for a worker to finish it",
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
    )


@task(
    iterable=["only"],
    help={
        "quick": "one pair of each, no cold setup (CI: proves the bench runs; never fails on a missed goal)",
        "pairs": "interleaved A/B pairs per measurement, after one warm-up pair (default 5)",
        "only": "run only these: setup, preview, install, queue, memory, cold (repeatable, or a comma list)",
        "out": "where to write the JSON results (default bench/results.json)",
    },
)
@edge
def bench(
    c: Context, quick: bool = False, pairs: int = 5, only: list[str] | None = None, out: str = "bench/results.json"
) -> None:
    """Benchmark against a throw-away stack: each pair interleaved, medians, ratios, goals (see bench/)."""
    from pathlib import Path

    from bench.run import run_bench

    run_bench(quick=quick, pairs=pairs, only=only or [], out=Path(out))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run tasks with: invoke --list")
