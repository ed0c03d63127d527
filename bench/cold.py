"""Cold setup, as an absolute time: `invoke setup` for a new project whose images and Blender do not exist.

The machine's own images are never deleted (others depend on them). Instead a new isolated project gets
fresh names: image tag `cold-<id>` and base image `renderdev/base:cold-<id>`, so the base is made (pulled,
else bootstrapped with debootstrap from the Debian mirror) and redis, db and api are built on it (their
apt packages fetched again, since no build cache holds layers on a new base), and a fresh Blender install
root is filled from the loopback mirror. Not cold: the host's api wheelhouse (compose/api/wheels, built on
the host and reused while its inputs are unchanged), the host's own packages and the page cache.
Afterwards the project and those images are removed.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from bench.proc import run
from bench.stack import SETUP_TIMEOUT, BenchStack, Log, environment, remove_images, remove_project, settings_under
from bench.stack import stack_values as make_values
from provisioner.images import BUILT

NAME = "cold_setup"


def measure(stack: BenchStack, *, log: Log) -> dict[str, Any]:
    ident = uuid.uuid4().hex[:8]
    root = stack.root / "cold"
    values = make_values(
        root,
        stack.mirror,
        project=f"rdcold-{ident}",
        image_tag=f"cold-{ident}",
        base_image=f"renderdev/base:cold-{ident}",
    )
    env = environment(values, root)
    settings = settings_under(env)
    images = [settings.image(name) for name in BUILT] + [settings.base_image]  # the worker: if anything made it
    log(f"  cold setup: compose project {settings.project}, images {', '.join(images)}")
    try:
        seconds, done = run([sys.executable, "-m", "invoke", "setup"], env=env, timeout=SETUP_TIMEOUT)
    finally:
        log(f"  cold setup: removing {remove_project(stack.client, settings)}")
        removed = remove_images(stack.client, images)
        log(f"  cold setup: removed images {', '.join(removed) or '(none)'}")
    report = done.stdout.split("Changed:", 1)[-1].split("Already right:", 1)[0]
    changed = [line.strip()[2:] for line in report.splitlines() if line.strip().startswith("- ")]
    log(f"  cold setup: {seconds:.1f} s")
    return {
        "name": NAME,
        "seconds": round(seconds, 2),
        "what": "python -m invoke setup for a new project: base image made, redis/db/api images built, "
        "services up and healthy, Blender installed from the loopback mirror and linked, aliases written",
        "not_cold": "the host's api wheelhouse (compose/api/wheels) is reused; the host's own packages (Docker, "
        "Python, debootstrap) and the page cache are as the machine left them",
        "changed": changed,
    }
