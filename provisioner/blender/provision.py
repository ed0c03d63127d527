"""Blender as a provisioned component: the plan-then-act steps of `invoke blender`, and its `invoke status` lines.

Steps: "resolve version" (from --version, else the api container), "install Blender X.Y.Z"
(ok when a verified install or the pinned distro package is there), "link <path>".
Re-running on a ready machine gives only ok steps and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from provisioner.blender import link as links
from provisioner.blender.declared_version import ApiContainerDown, read_declared_version
from provisioner.blender.install_root import binary_path
from provisioner.blender.sources import (
    Request,
    Result,
    SourceName,
    describe,
    existing_install,
    install_from_sources,
    order,
)
from provisioner.blender.verify import reported_version
from provisioner.blender.versions import load_versions, parse_version
from provisioner.config import Settings
from provisioner.errors import BlenderError, DockerError, HostWriteError, RenderdevError
from provisioner.plan import Check, Step, StepState, apply_steps

if TYPE_CHECKING:
    import docker

COMPONENT = "blender"


def plan_blender(
    client: docker.DockerClient | None,
    settings: Settings,
    console: Console,
    *,
    version: str | None = None,
    force: bool = False,
    insecure: bool = False,
    dry_run: bool = False,
) -> list[Step]:
    """The steps that put Blender `version` (else the api container's) on the host and link it.

    Problems that would stop the work (unknown version, a link that is not ours without force,
    no write access) are raised here, before anything is changed. With dry_run and no api container
    yet, the plan is one step that reads the version once the container is up.
    """
    versions = load_versions(settings.blender_versions_file)
    names = order(settings.blender_source)
    if version is None:
        if client is None:
            raise DockerError(
                "no Docker client to read the api container's Blender version", hint="pass --version X.Y.Z"
            )
        try:
            declared = read_declared_version(client, settings)
        except ApiContainerDown as exc:
            if not dry_run:
                raise
            return [_deferred(client, settings, console, exc, force=force, insecure=insecure)]
        version, why = declared.version, f"{declared.where} of container {declared.container}"
    else:
        version, why = str(parse_version(version)), "given with --version"
    entry = versions.entry(version)
    req = Request(version, entry, versions.path, settings, console, insecure, remember=not dry_run)
    root, link_path = settings.blender_install_root, settings.blender_link

    steps = [Step(COMPONENT, "resolve version", StepState.OK, f"Blender {version}: {why}")]

    current = existing_install(req, names)
    result: dict[str, Result] = {}
    install_title = f"install Blender {version}"
    if current is not None:
        steps.append(Step(COMPONENT, install_title, StepState.OK, f"{current.detail}: {current.binary}"))
    else:
        to_try = [n for n in names if n is not SourceName.INSTALLED]
        if not to_try:
            raise BlenderError(
                f"--source installed: no verified install of Blender {version} in {root}",
                hint="install it: invoke blender (with --source auto)",
            )

        def apply_install() -> str:
            got = install_from_sources(req, to_try)
            result["result"] = got
            return f"{got.source}: {got.binary}"

        detail = "not installed; will try " + ", then ".join(describe(req, n) for n in to_try)
        steps.append(Step(COMPONENT, install_title, StepState.CHANGE, detail, apply=apply_install))

    expected = current.binary if current is not None else binary_path(root, version)
    plan = links.decide(link_path, expected, install_root=root, version=version, remember=not dry_run)
    links.check(plan, force=force)

    def apply_link() -> str:
        got = result.get("result") or current
        if got is None:  # the install step did not run (the caller skipped it)
            raise BlenderError(f"Blender {version} is not installed: cannot link {link_path}", hint="invoke blender")
        now = links.decide(link_path, got.binary, install_root=root, version=version)
        return links.apply(now, force=force, install_root=root)

    link_title = f"link {link_path}"
    if plan.ok and current is not None:
        steps.append(Step(COMPONENT, link_title, StepState.OK, plan.now))
    else:
        detail = f"{plan.now}; will point it at {expected}" if not plan.ok else f"{plan.now}; checked again"
        if current is None:
            detail += " (after the install)"
        steps.append(Step(COMPONENT, link_title, StepState.CHANGE, detail, apply=apply_link))
    return steps


def _deferred(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    why: RenderdevError,
    *,
    force: bool,
    insecure: bool,
) -> Step:
    def apply() -> str:
        steps = plan_blender(client, settings, console, force=force, insecure=insecure)
        outcome = apply_steps(console, steps, dry_run=False)
        return "; ".join(outcome.changed) or "already right"

    return Step(
        COMPONENT,
        "resolve version",
        StepState.CHANGE,
        f"read from the api container once it is up (now: {why.message})",
        apply=apply,
    )


def check_blender(client: docker.DockerClient | None, settings: Settings) -> list[Check]:
    """`invoke status` lines: the wanted version, installed?, link right?, does the link report it?"""
    name = "blender version (api container)"
    try:
        versions = load_versions(settings.blender_versions_file)
    except RenderdevError as exc:
        return [Check("blender versions file", False, exc.message, f"fix {settings.blender_versions_file}")]
    if client is None:
        return [Check(name, False, "no Docker engine answers", "start Docker, then: invoke services")]
    try:
        declared = read_declared_version(client, settings)
    except RenderdevError as exc:
        return [Check(name, False, exc.message, exc.hint or "invoke services")]
    checks = [Check(name, True, str(declared))]
    version = declared.version
    try:
        entry = versions.entry(version)
    except BlenderError as exc:
        checks.append(Check(f"blender {version} known", False, exc.message, exc.hint or ""))
        return checks

    req = Request(version, entry, versions.path, settings, Console(quiet=True))
    current = existing_install(req, order(settings.blender_source))
    root, link_path = settings.blender_install_root, settings.blender_link
    if current is not None:
        checks.append(Check(f"blender {version} installed", True, f"{current.detail}: {current.binary}"))
    else:
        checks.append(Check(f"blender {version} installed", False, f"no verified install in {root}", "invoke blender"))

    expected = current.binary if current is not None else binary_path(root, version)
    plan = links.decide(link_path, expected, install_root=root, version=version)
    link_ok = plan.ok and current is not None
    fix = ""
    if not link_ok:
        fix = "invoke blender --force" if plan.needs_force else "invoke blender"
        try:
            links.check(plan, force=True)
        except HostWriteError as exc:
            fix = exc.hint or fix
    state = plan.now if plan.ok else f"{plan.now} (wanted: a link to {expected})"
    checks.append(Check(f"blender link {link_path}", link_ok, state, fix))

    try:
        found, first = reported_version(link_path)
    except BlenderError as exc:
        found, first = None, exc.message.splitlines()[0]
    checks.append(
        Check(
            f"{link_path} reports Blender {version}",
            found == version,
            first or "prints no version",
            "" if found == version else "invoke blender",
        )
    )
    return checks
