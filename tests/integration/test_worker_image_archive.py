"""The worker image with Blender from a release archive, built by the real code on the real engine.

The api image (of a copy of compose/) declares Blender 9.9.9, which no Debian package gives; a test versions file
names its archive and sha256, and a loopback mirror serves a release-shaped archive whose `blender` is a script
printing 'Blender 9.9.9'. The images get a tag of this test's own (never the dev images) and are removed at the end.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from docker import DockerClient
from docker.errors import APIError, NotFound
from rich.console import Console

from provisioner import wheelhouse
from provisioner.config import REPO_ROOT, Settings, load_settings
from provisioner.console import make_console
from provisioner.errors import BlenderError, DockerError
from provisioner.images import (
    HASH_LABEL,
    SHA256_LABEL,
    context_hash,
    ensure_images,
    find_image,
    plan_images,
    unpacked_stages,
)
from provisioner.plan import Step, StepState
from provisioner.ports import free_port
from provisioner.worker_blender import staging_dir
from tests.unit.test_blender_sources import TOP, URL, VERSION, make_release, sha256_of

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("heavy")]  # one at a time: tests/conftest.py

RELEASE = f"release/Blender9.9/{TOP}.tar.xz"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass(frozen=True)
class Mirror:
    folder: Path  # laid out like download.blender.org: release/BlenderX.Y/<file>
    url: str  # the same folder over loopback HTTP

    @property
    def archive(self) -> Path:
        return self.folder / RELEASE


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "www"
    make_release(folder / RELEASE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(folder, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def write_versions(path: Path, sha: str) -> Path:
    path.write_text(f'format: 1\nversions:\n  "{VERSION}":\n    linux-x64:\n      url: {URL}\n      sha256: "{sha}"\n')
    return path


@pytest.fixture
def compose_9(tmp_path: Path) -> Path:
    """A copy of compose/ whose api image declares Blender 9.9.9, with the repository's wheelhouse (brought up to
    date first, as `invoke images` does)."""
    repo = load_settings()
    if wheelhouse.stale_parts(repo):
        wheelhouse.build_wheelhouse(repo, make_console())
    compose = tmp_path / "compose"
    shutil.copytree(REPO_ROOT / "compose", compose, ignore=shutil.ignore_patterns("*.tar.xz"))
    api = compose / "api" / "Dockerfile"
    api.write_text(api.read_text().replace("ARG BLENDER_VERSION=3.4.1", f"ARG BLENDER_VERSION={VERSION}"))
    return compose


@pytest.fixture(scope="module")
def tags(docker_client: DockerClient) -> Iterator[list[str]]:
    """Image tags these tests made: removed after the module (its tests share the build cache), with the untagged
    images their builds left (the first stages, a failed build's last step): all labelled with Blender 9.9.9, a
    version only these tests build."""
    made: list[str] = []
    yield made
    for tag in made:
        if find_image(docker_client, tag) is not None:
            remove_image(docker_client, tag)
    for image in docker_client.images.list(filters={"dangling": True, "label": f"org.blender.version={VERSION}"}):
        remove_image(docker_client, image.id)


def remove_image(client: DockerClient, ref: str) -> None:
    """Remove the image and the containers made from it: a `docker run --rm` or a failed build's step container
    may still be on its way out when the module ends (under load, the engine removes it a moment later)."""
    deadline = time.monotonic() + 60
    while True:
        for container in client.containers.list(all=True, filters={"ancestor": ref}):
            with contextlib.suppress(NotFound, APIError):
                container.remove(force=True)
        try:
            client.images.remove(ref, force=True)
            return
        except NotFound:
            return
        except APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def settings_with(tmp_path: Path, compose: Path, mirror: Mirror, sha: str, tag: str, state: str) -> Settings:
    return load_settings(
        compose_dir=compose,
        state_dir=tmp_path / state,
        image_tag=tag,
        blender_versions_file=write_versions(tmp_path / "versions.yaml", sha),
        blender_mirror=mirror.url,
        blender_source="auto",
        blender_official_base=f"http://127.0.0.1:{free_port()}/release",  # a closed port: never the real site
        download_timeout=20.0,
    )


def worker_step(client: DockerClient, settings: Settings) -> Step:
    steps = plan_images(client, settings, Console(file=io.StringIO()), only=("worker",))
    return next(s for s in steps if s.title == f"image {settings.image('worker')}")


def test_worker_image_with_blender_from_a_verified_release_archive(
    docker_client: DockerClient, tmp_path: Path, compose_9: Path, mirror: Mirror, tags: list[str]
) -> None:
    sha = sha256_of(mirror.archive)
    tag = f"rdtest-{uuid.uuid4().hex[:8]}"
    settings = settings_with(tmp_path, compose_9, mirror, sha, tag, "state")
    image_name = settings.image("worker")
    tags.append(image_name)

    # the plan (what `invoke images --dry-run` prints) names the source
    planned = worker_step(docker_client, settings)
    assert planned.state is StepState.CHANGE
    assert f"Blender {VERSION} from the release archive {TOP}.tar.xz (sha256 {sha[:12]}...)" in planned.detail
    assert f"fetched from mirror {mirror.url}/{RELEASE}, else official" in planned.detail

    started = time.monotonic()
    outcome = ensure_images(docker_client, settings, make_console(), only=("worker",))
    seconds = time.monotonic() - started
    assert any(image_name in line for line in outcome.changed), outcome.changed
    image = find_image(docker_client, image_name)
    assert image is not None
    base = find_image(docker_client, settings.base_image)
    assert base is not None and image.labels[HASH_LABEL] == context_hash(settings, "worker", base.id)
    assert image.labels["org.blender.version"] == VERSION and image.labels["org.renderdev.blender-source"] == "archive"
    said = docker_client.containers.run(image_name, ["blender", "--version"], remove=True).decode()
    assert said.splitlines()[0] == f"Blender {VERSION}"
    where = docker_client.containers.run(image_name, ["readlink", "/usr/local/bin/blender"], remove=True).decode()
    assert where.strip() == f"/opt/blender-{VERSION}/blender"
    assert [p.name for p in staging_dir(settings).iterdir()] == [".gitignore"], "the staged archive is gone"
    assert sha256_of(tmp_path / "state" / "blender-archives" / f"{TOP}.tar.xz") == sha  # kept, verified
    print(f"\nworker image from the release archive: built in {seconds:.0f} s")

    # the same archive: nothing to do
    again = worker_step(docker_client, settings)
    assert again.state is StepState.OK and "cached " in again.detail, again.detail
    make_release(mirror.archive, VERSION)  # the same bytes again: still ok
    assert worker_step(docker_client, settings).state is StepState.OK
    assert [i.labels[SHA256_LABEL] for i in unpacked_stages(docker_client, VERSION)] == [sha]

    # another archive (its sha256 in the versions file): a rebuild, and the old archive's first stage goes
    make_release(mirror.archive, VERSION, says=f"Blender {VERSION} (another build)")
    other = sha256_of(mirror.archive)
    write_versions(tmp_path / "versions.yaml", other)
    assert worker_step(docker_client, settings).detail.startswith("rebuild: ")
    rebuilt = ensure_images(docker_client, settings, make_console(), only=("worker",))
    assert "removed 1 superseded unpacked archive(s)" in rebuilt.changed[0], rebuilt.changed
    assert [i.labels[SHA256_LABEL] for i in unpacked_stages(docker_client, VERSION)] == [other]
    said = docker_client.containers.run(image_name, ["blender", "--version"], remove=True).decode()
    assert said.splitlines()[0] == f"Blender {VERSION} (another build)"


def test_an_archive_whose_blender_names_another_version_fails_the_build(
    docker_client: DockerClient, tmp_path: Path, compose_9: Path, mirror: Mirror, tags: list[str]
) -> None:
    make_release(mirror.archive, VERSION, says="Blender 9.9.8")
    tag = f"rdtest-{uuid.uuid4().hex[:8]}"
    settings = settings_with(tmp_path, compose_9, mirror, sha256_of(mirror.archive), tag, "state")
    tags.append(settings.image("worker"))
    with pytest.raises(DockerError) as err:
        ensure_images(docker_client, settings, make_console(), only=("worker",))
    assert f"blender --version says 'Blender 9.9.8', not Blender {VERSION} (archive)" in err.value.message
    assert find_image(docker_client, settings.image("worker")) is None


def test_a_tampered_archive_fails_before_any_build_naming_file_and_digests(
    docker_client: DockerClient, tmp_path: Path, compose_9: Path, mirror: Mirror, tags: list[str]
) -> None:
    expected = sha256_of(mirror.archive)
    with mirror.archive.open("ab") as fh:  # the mirror now serves other bytes under the same name
        fh.write(b"tampered")
    actual = sha256_of(mirror.archive)
    settings = settings_with(tmp_path, compose_9, mirror, expected, f"rdtest-{uuid.uuid4().hex[:8]}", "state-t")
    tags.append(settings.image("worker"))
    out = io.StringIO()
    with pytest.raises(BlenderError) as err:
        ensure_images(docker_client, settings, Console(file=out, width=300), only=("worker",))
    msg = err.value.message
    assert f"sha256 mismatch for {mirror.url}/{RELEASE}: expected {expected}, got {actual}" in msg, msg
    assert "building " not in out.getvalue(), "no build may start"
    assert find_image(docker_client, settings.image("worker")) is None
    assert [p.name for p in staging_dir(settings).iterdir()] == [".gitignore"]
    assert list((tmp_path / "state-t" / "blender-archives").iterdir()) == [], "nothing unverified is kept"
