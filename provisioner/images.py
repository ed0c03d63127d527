"""The project's images: a Debian base image, then redis, db, api, worker and registry built on it from
compose/<name>/.

The base is pulled (`debian:bookworm-slim`) where a registry answers, and otherwise bootstrapped
from Debian's mirror with debootstrap and imported, so this works air-gapped and in CI.

Every built image carries the label `org.renderdev.context-hash`: a digest of its build context
(its compose/<name>/ folder, the build args, the base image's id and, for api and worker, the wheelhouse's
inputs). An image whose label matches is "ok" and is not rebuilt.

The worker image (a render worker with Blender) is built from compose/worker/Dockerfile with compose/ as its
context, so that it installs the api's wheelhouse. Its Blender is the version the api image declares (the api
Dockerfile's `ARG BLENDER_VERSION`): from the Debian package blender_versions.yaml pins for that version, else from
the release archive it names, fetched and sha256-verified on the host and staged into the build context
(provisioner/worker_blender.py). The archive's sha256 is a build arg, and so part of the context hash.

The registry image (Debian's `docker-registry` package) is the one a swarm deploy runs to serve the worker image to
its nodes (`invoke deploy`, provisioner/swarm.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils import parse_repository_tag
from rich.console import Console

from provisioner import proc, wheelhouse
from provisioner.config import REPO_ROOT, SERVICES, Settings
from provisioner.digest import digest_tree
from provisioner.errors import BlenderError, DockerError
from provisioner.plan import Outcome, Step, StepState, run_steps
from provisioner.worker_blender import WorkerBlender, choose, staged
from provisioner.worker_blender import describe as describe_blender

if TYPE_CHECKING:
    import docker
    from docker.models.images import Image

HASH_LABEL = "org.renderdev.context-hash"
SHA256_LABEL = "org.renderdev.blender-sha256"  # the worker's release archive, on its Dockerfile's first stage
BUILT = ("redis", "db", "api", "worker", "registry")  # built in this order, each FROM the base image
# What the stack runs: `invoke setup` and the test kit build these. The worker image (Blender inside, about 1.3 GB
# and 4-5 minutes cold) only when asked: `invoke images` (all of BUILT), `invoke workers` or `invoke deploy`; the
# registry image (a swarm's, about 20 s) by `invoke images` or `invoke deploy`.
STACK_IMAGES = SERVICES
WHEELHOUSE_IMAGES = ("api", "worker")  # images that install the api's wheelhouse (compose/api/wheels/)
IMAGE_DISTRO = "debian-12"  # the base image's distro, as blender_versions.yaml's apt pins name it
_BLENDER_ARG = re.compile(r"^ARG\s+BLENDER_VERSION=(\S+)\s*$", re.MULTILINE)
SUITE = "bookworm"
BUILD_TIMEOUT = 3600  # seconds without a byte from the engine before a build is given up
BOOTSTRAP_TIMEOUT = 1800.0
LOG_TAIL = 25
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in build output (e.g. pip's errors)


def find_image(client: docker.DockerClient, name: str) -> Image | None:
    try:
        return client.images.get(name)
    except ImageNotFound:
        return None
    except DockerException as exc:
        raise DockerError(f"cannot inspect image {name}: {exc}") from exc


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def context_dir(settings: Settings, name: str) -> Path:
    """The folder that holds the image's Dockerfile (and, except for worker, is its whole build context)."""
    return settings.compose_dir / name


def build_context(settings: Settings, name: str) -> tuple[Path, str | None]:
    """What the engine is sent: the context folder, and the Dockerfile's path in it (None: its own Dockerfile).
    The worker's context is compose/, for the api's wheelhouse."""
    if name == "worker":
        return settings.compose_dir, "worker/Dockerfile"
    return context_dir(settings, name), None


def api_blender_version(settings: Settings) -> str:
    """The Blender version the api image declares: its Dockerfile's `ARG BLENDER_VERSION=X.Y.Z` (what
    `invoke blender` reads back from the api container)."""
    dockerfile = context_dir(settings, "api") / "Dockerfile"
    try:
        found = _BLENDER_ARG.search(dockerfile.read_text())
    except OSError as exc:
        raise DockerError(f"cannot read {dockerfile}: {exc.strerror}") from exc
    if found is None:
        raise DockerError(
            f"{dockerfile} declares no Blender version (no `ARG BLENDER_VERSION=X.Y.Z` line)",
            hint=f"add `ARG BLENDER_VERSION=3.4.1` to {dockerfile}, then re-run: invoke images",
        )
    return found.group(1)


def worker_blender(settings: Settings) -> WorkerBlender:
    """The worker image's Blender: the api's declared version, from the Debian package blender_versions.yaml pins for
    it on the base image's distro, else from its release archive (provisioner/worker_blender.py)."""
    from provisioner.blender.versions import load_versions

    version = api_blender_version(settings)
    return choose(version, load_versions(settings.blender_versions_file), IMAGE_DISTRO)


def build_args(settings: Settings, name: str | None = None) -> dict[str, str]:
    args = {"BASE_IMAGE": settings.base_image}
    if name == "worker":
        args.update(worker_blender(settings).build_args())
    return args


def context_hash(
    settings: Settings,
    name: str,
    base_id: str,
    *,
    root: Path = REPO_ROOT,
    wheelhouse_parts: Mapping[str, str] | None = None,
) -> str:
    """The digest an up-to-date image `name` carries in its HASH_LABEL. Pure: reads files only. `wheelhouse_parts`:
    the wheelhouse's part digests when the caller read them already (see plan_images)."""
    extra = {"base_image_id": base_id, **{f"arg {k}": v for k, v in build_args(settings, name).items()}}
    if name in WHEELHOUSE_IMAGES:
        extra["wheelhouse"] = wheelhouse.inputs_digest(settings, root, parts=wheelhouse_parts)
    # the worker's staged archive (blender/) counts through its sha256, a build arg
    return digest_tree(context_dir(settings, name), exclude=("wheels", "blender"), extra=extra)


# ---------------------------------------------------------------- plan


def plan_images(
    client: docker.DockerClient, settings: Settings, console: Console, *, only: Sequence[str] = BUILT
) -> list[Step]:
    """Base image, api wheelhouse, then redis, db, api, worker (or those of `only`): each "ok" or what would change.

    The base image is looked up once, and the wheelhouse's inputs (requirements.txt, the renderfarm sources) are read
    and hashed once, for the wheelhouse step and for the api and worker images' context hashes alike: nothing is
    applied between those reads, so one read is the same check as two (and a consistent one)."""
    base = find_image(client, settings.base_image)
    steps = [_plan_base(client, settings, console, base)]
    parts = wheelhouse.part_digests(settings)
    steps.append(wheelhouse.plan_wheelhouse(settings, console, parts=parts))
    for name in BUILT:
        if name in only:
            steps.append(_plan_build(client, settings, console, name, base.id if base else None, parts))
    return steps


def ensure_images(
    client: docker.DockerClient, settings: Settings, console: Console, *, only: Sequence[str] = BUILT
) -> Outcome:
    """Plan, show the plan, and build what is missing or out of date. A second run changes nothing."""
    steps = plan_images(client, settings, console, only=only)
    return run_steps(console, steps, dry_run=False, heading="Plan: images")


def _plan_base(client: docker.DockerClient, settings: Settings, console: Console, image: Image | None) -> Step:
    title = f"base image {settings.base_image}"
    if image is not None:
        return Step("images", title, StepState.OK, short_id(image.id))
    return Step(
        "images",
        title,
        StepState.CHANGE,
        f"pull {settings.base_pull}, else bootstrap Debian {SUITE} from {settings.debian_mirror}",
        apply=lambda: make_base_image(client, settings, console),
    )


def _plan_build(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    name: str,
    base_id: str | None,
    wheelhouse_parts: Mapping[str, str],
) -> Step:
    tag = settings.image(name)
    title = f"image {tag}"

    def apply() -> str:
        return build_image(client, settings, console, name)

    blender = ""  # the worker's: "; Blender X.Y.Z from ..." in each state, so a dry run says where it comes from
    if name == "worker":
        try:
            blender = "; " + describe_blender(settings, worker_blender(settings))
        except (BlenderError, DockerError) as exc:
            return Step("images", title, StepState.CHANGE, f"cannot build: {exc.message}", apply=apply)
    if base_id is None:
        return Step("images", title, StepState.CHANGE, f"build, once the base image is there{blender}", apply=apply)
    image = find_image(client, tag)
    if image is None:
        return Step(
            "images", title, StepState.CHANGE, f"build from {context_dir(settings, name)}{blender}", apply=apply
        )
    if image.labels.get(HASH_LABEL) == context_hash(settings, name, base_id, wheelhouse_parts=wheelhouse_parts):
        return Step("images", title, StepState.OK, f"{short_id(image.id)}{blender}")
    inputs = f"{context_dir(settings, name)}, the base image"
    if name in WHEELHOUSE_IMAGES:
        inputs += ", requirements.txt or the renderfarm sources"
    if name == "worker":
        inputs += ", the declared Blender or its archive"
    detail = f"rebuild: {inputs} changed since {short_id(image.id)}{blender}"
    return Step("images", title, StepState.CHANGE, detail, apply=apply)


# ---------------------------------------------------------------- base image


def make_base_image(client: docker.DockerClient, settings: Settings, console: Console) -> str:
    """Pull the base where a registry answers; otherwise bootstrap it from the Debian mirror."""
    try:
        pull_base(client, settings)
        return f"pulled {settings.base_pull}"
    except DockerError as exc:
        console.print(f"  pull of {settings.base_pull} failed ({exc.message}); bootstrapping instead", markup=False)
    seconds = bootstrap_base(client, settings, console)
    return f"bootstrapped Debian {SUITE} from {settings.debian_mirror} in {seconds:.0f} s"


def pull_base(client: docker.DockerClient, settings: Settings) -> None:
    repo, tag = parse_repository_tag(settings.base_pull)
    try:
        image = client.images.pull(repo, tag=tag or "latest")
        new_repo, new_tag = parse_repository_tag(settings.base_image)
        image.tag(new_repo, new_tag or "latest")
    except (DockerException, requests.RequestException) as exc:
        raise DockerError(f"cannot pull {settings.base_pull}: {_first_line(exc)}") from exc


def bootstrap_base(client: docker.DockerClient, settings: Settings, console: Console) -> float:
    """debootstrap a minimal Debian into a temporary folder, tar it and `docker import` it. Needs root."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise DockerError(
            f"cannot make the base image {settings.base_image}: {settings.base_pull} could not be pulled"
            " and debootstrap is not installed",
            hint="sudo apt-get install -y debootstrap, then re-run: invoke images",
        )
    if os.geteuid() != 0:
        raise DockerError(
            f"cannot make the base image {settings.base_image}: debootstrap must run as root",
            hint="sudo -E invoke images",
        )
    started = time.monotonic()
    repo, tag = parse_repository_tag(settings.base_image)
    with tempfile.TemporaryDirectory(prefix="renderdev-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        console.print(f"  debootstrap --variant=minbase {SUITE} from {settings.debian_mirror} ...", markup=False)
        proc.run(
            [debootstrap, "--variant=minbase", SUITE, str(rootfs), settings.debian_mirror],
            timeout=BOOTSTRAP_TIMEOUT,
            hint=f"check that {settings.debian_mirror} answers (RENDERDEV_DEBIAN_MIRROR), then re-run: invoke images",
        )
        _tidy_rootfs(rootfs)
        tarball = Path(tmp) / "rootfs.tar"
        proc.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], timeout=600)
        console.print(f"  docker import {settings.base_image} ...", markup=False)
        try:
            client.api.import_image_from_file(
                str(tarball), repository=repo, tag=tag or "latest", changes=['CMD ["bash"]']
            )
        except (DockerException, requests.RequestException) as exc:
            raise DockerError(f"docker import of {settings.base_image} failed: {_first_line(exc)}") from exc
    if find_image(client, settings.base_image) is None:
        raise DockerError(f"docker import reported no error, but {settings.base_image} is not there")
    return time.monotonic() - started


def _tidy_rootfs(rootfs: Path) -> None:
    """Make the bootstrapped tree behave like debian:bookworm-slim for image builds."""
    policy = rootfs / "usr/sbin/policy-rc.d"  # package installs never start services in a build
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for path in rootfs.glob(pattern):
            path.unlink()


# ---------------------------------------------------------------- builds


def build_image(client: docker.DockerClient, settings: Settings, console: Console, name: str) -> str:
    """Build settings.image(name) from compose/<name>/ on the base image, labelled with its context hash."""
    base = find_image(client, settings.base_image)
    if base is None:
        raise DockerError(
            f"cannot build {settings.image(name)}: the base image {settings.base_image} is missing",
            hint="invoke images",
        )
    args = build_args(settings, name)  # first: a worker whose Blender has no source fails here
    blender = worker_blender(settings) if name == "worker" else None
    # next, the worker's release archive (for Blender without a Debian package): fetched and verified, then staged in
    # the build context for this build only. A download that fails or does not match fails here, before any build.
    with staged(settings, blender, console) if blender is not None else contextlib.nullcontext():
        if name in WHEELHOUSE_IMAGES and wheelhouse.stale_parts(settings):
            wheelhouse.build_wheelhouse(settings, console)
        previous = find_image(client, settings.image(name))
        started = time.monotonic()
        context, dockerfile = build_context(settings, name)
        image_id = docker_build(
            client,
            console,
            tag=settings.image(name),
            context=context,
            dockerfile=dockerfile,
            buildargs=args,
            labels={HASH_LABEL: context_hash(settings, name, base.id)},
        )
    done = f"built {short_id(image_id)} in {time.monotonic() - started:.0f} s"
    if previous is not None and previous.id != image_id and _remove_untagged(client, previous.id):
        done += f", removed the old {short_id(previous.id)}"
    if blender is not None and (pruned := _prune_unpacked(client, blender)):
        done += f", removed {pruned} superseded unpacked archive(s)"
    return done


UNPACKED_STAGE = "org.renderdev.stage=worker-unpacked"  # the label of the worker Dockerfile's first stage


def unpacked_stages(client: docker.DockerClient, version: str) -> list[Image]:
    """The untagged images of the worker Dockerfile's first stage (an unpacked release archive) for `version`."""
    try:
        found: list[Image] = client.images.list(
            filters={"dangling": True, "label": [UNPACKED_STAGE, f"org.blender.version={version}"]}
        )
    except DockerException as exc:
        raise DockerError(f"cannot list images: {_first_line(exc)}") from exc
    return found


def _prune_unpacked(client: docker.DockerClient, chosen: WorkerBlender) -> int:
    """Remove the first-stage images of archives of this version other than the one just built from (a changed
    archive leaves the old one unpacked, a Blender's size, as build cache). The current one stays: a rebuild with the
    same archive does not unpack it again. Apt builds have no archive, and remove nothing."""
    if not chosen.sha256:
        return 0
    stale = [
        i
        for i in unpacked_stages(client, chosen.version)
        if i.labels.get(SHA256_LABEL) not in (None, "", chosen.sha256)
    ]
    return sum(_remove_untagged(client, image.id) for image in stale)


def _remove_untagged(client: docker.DockerClient, image_id: str) -> bool:
    """Remove an image the new build superseded, unless a container (e.g. the running stack) still uses it."""
    try:
        client.images.remove(image_id)
    except APIError as exc:
        if exc.status_code == 409:  # in use by a container, or tagged elsewhere: keep it
            return False
        if exc.status_code == 404:  # already gone: another build (a concurrent setup or test) removed it
            return False
        raise DockerError(f"cannot remove the superseded image {short_id(image_id)}: {exc.explanation}") from exc
    return True


def docker_build(
    client: docker.DockerClient,
    console: Console,
    *,
    tag: str,
    context: Path,
    buildargs: dict[str, str],
    labels: dict[str, str],
    dockerfile: str | None = None,
) -> str:
    """Build through the engine's API, printing each Dockerfile step; a failure carries the log's tail.
    `dockerfile`: its path inside `context` (default: context/Dockerfile)."""
    log: deque[str] = deque(maxlen=LOG_TAIL)
    image_id: str | None = None
    hint = f"fix {context / (dockerfile or 'Dockerfile')} (or what it fetches), then re-run: invoke images"
    console.print(f"  building {tag} from {context / (dockerfile or 'Dockerfile')} ...", markup=False)
    try:
        stream: Any = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            timeout=BUILD_TIMEOUT,
        )
        for chunk in stream:
            if "error" in chunk:
                raise DockerError(_build_failure(tag, str(chunk["error"]), log), hint=hint)
            for line in _ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
                if line.strip():
                    log.append(line.rstrip())
                if line.startswith("Step "):
                    console.print(f"    {line[:150]}", markup=False, highlight=False)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and "ID" in aux:
                image_id = str(aux["ID"])
    except (DockerException, requests.RequestException) as exc:
        raise DockerError(_build_failure(tag, _first_line(exc), log), hint=hint) from exc
    built = find_image(client, tag)
    if built is None or (image_id is not None and built.id != image_id):
        raise DockerError(_build_failure(tag, "the engine reported no image", log), hint=hint)
    return str(built.id)


def _build_failure(tag: str, error: str, log: deque[str]) -> str:
    msg = f"building image {tag} failed: {error.strip()}"
    if log:
        msg += "\n" + "\n".join(f"  | {line}" for line in log)
    return msg


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
