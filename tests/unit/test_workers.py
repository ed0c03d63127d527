"""`invoke workers` without Docker: --replicas and --queues checked naming the value, the containers' user (never
root), the worker options a container reads from its environment, and the worker image's Blender (Debian's package
when one is pinned; otherwise the release archive, tests/unit/test_worker_blender.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioner.compose import CONTAINER_UID as WORKER_UID
from provisioner.compose import container_user as worker_user
from provisioner.config import REPO_ROOT, load_settings
from provisioner.errors import BlenderError, ConfigError
from provisioner.images import api_blender_version, build_args, context_hash, worker_blender
from provisioner.workers import parse_replicas
from renderfarm.errors import RenderConfigError
from renderfarm.keys import QueueName
from renderfarm.settings import WorkerOptions


@pytest.mark.parametrize(("raw", "want"), [("0", 0), ("2", 2), (" 32 ", 32), (3, 3)])
def test_replicas_from_0_to_32(raw: str | int, want: int) -> None:
    assert parse_replicas(raw) == want


@pytest.mark.parametrize("raw", ["-1", "33", "two", "1.5", ""])
def test_other_replicas_are_refused_naming_the_value(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_replicas(raw)
    assert repr(raw) in err.value.message and "0 to 32" in err.value.message
    assert err.value.hint is not None and "invoke workers --replicas 2" in err.value.hint


def test_containers_run_as_the_host_user_or_as_the_images_user_for_root() -> None:
    assert worker_user(1000, 1000) == "1000:1000"
    assert worker_user(0, 0) == f"{WORKER_UID}:{WORKER_UID}"


def test_worker_options_from_the_environment() -> None:
    assert WorkerOptions.from_env({}) == WorkerOptions(queues=(QueueName.PREEMPTIBLE, QueueName.STANDARD))
    got = WorkerOptions.from_env(
        {"RENDERFARM_QUEUES": "sq, pq,sq", "RENDERFARM_WARM_BLENDER": "off", "RENDERFARM_WARM_MAX_JOBS": "7"}
    )
    assert got == WorkerOptions(queues=(QueueName.STANDARD, QueueName.PREEMPTIBLE), warm_blender=False, warm_max_jobs=7)


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("RENDERFARM_QUEUES", "xq", "unknown queue(s) xq"),
        ("RENDERFARM_QUEUES", ",", "unknown queue(s) (none given)"),
        ("RENDERFARM_WARM_BLENDER", "maybe", "is not true or false"),
        ("RENDERFARM_WARM_MAX_JOBS", "0", "out of range"),
    ],
)
def test_bad_worker_options_name_the_variable_and_value(variable: str, value: str, said: str) -> None:
    with pytest.raises(RenderConfigError) as err:
        WorkerOptions.from_env({variable: value})
    assert f"{variable}={value!r}" in str(err.value) and said in str(err.value)


def _compose_copy(tmp_path: Path, version: str | None = None) -> Path:
    compose = tmp_path / "compose"
    shutil.copytree(REPO_ROOT / "compose", compose, ignore=shutil.ignore_patterns("wheels"))
    if version is not None:
        dockerfile = compose / "api" / "Dockerfile"
        text = dockerfile.read_text().replace("ARG BLENDER_VERSION=3.4.1", f"ARG BLENDER_VERSION={version}")
        dockerfile.write_text(text)
    return compose


def test_the_worker_gets_the_apis_blender_from_the_pinned_debian_package(tmp_path: Path) -> None:
    settings = load_settings(compose_dir=_compose_copy(tmp_path), state_dir=tmp_path / "state")
    assert api_blender_version(settings) == "3.4.1"
    chosen = worker_blender(settings)
    assert (chosen.version, chosen.source, chosen.package) == ("3.4.1", "apt", "blender=3.4.1+dfsg-2+b1")
    args = build_args(settings, "worker")
    assert (args["BLENDER_VERSION"], args["BLENDER_PACKAGE"]) == ("3.4.1", "blender=3.4.1+dfsg-2+b1")
    assert (args["BLENDER_SOURCE"], args["BLENDER_ARCHIVE"], args["BLENDER_SHA256"]) == ("apt", "", "")
    assert build_args(settings, "api") == build_args(settings) == {"BASE_IMAGE": settings.base_image}


def test_a_declared_version_without_a_debian_package_comes_from_its_release_archive(tmp_path: Path) -> None:
    settings = load_settings(compose_dir=_compose_copy(tmp_path, "4.2.3"), state_dir=tmp_path / "state")
    chosen = worker_blender(settings)
    assert (chosen.version, chosen.source, chosen.archive) == ("4.2.3", "archive", "blender-4.2.3-linux-x64.tar.xz")
    assert chosen.sha256 == "3a64efd1982465395abab4259b4091d5c8c56054c7267e9633e4f702a71ea3f4"  # the versions file's
    args = build_args(settings, "worker")
    assert (args["BLENDER_SOURCE"], args["BLENDER_PACKAGE"], args["BLENDER_SHA256"]) == ("archive", "", chosen.sha256)
    context_hash(settings, "worker", "sha256:base")  # and so the image can be planned and built


def test_the_worker_image_hash_tracks_its_folder_the_wheelhouse_inputs_and_the_declared_blender(
    tmp_path: Path,
) -> None:
    compose = _compose_copy(tmp_path)
    settings = load_settings(compose_dir=compose, state_dir=tmp_path / "state")
    before = context_hash(settings, "worker", "sha256:base")
    with (compose / "api" / "requirements.txt").open("a") as fh:
        fh.write("# edited\n")
    after_requirements = context_hash(settings, "worker", "sha256:base")
    assert after_requirements != before
    with (compose / "worker" / "Dockerfile").open("a") as fh:
        fh.write("# edited\n")
    assert context_hash(settings, "worker", "sha256:base") != after_requirements
    same = context_hash(settings, "worker", "sha256:base")
    api_file = compose / "api" / "Dockerfile"
    api_file.write_text(api_file.read_text() + "# an api-only edit\n")
    assert context_hash(settings, "worker", "sha256:base") == same  # the api's Dockerfile: only its Blender counts
    api_file.write_text(api_file.read_text().replace("ARG BLENDER_VERSION=3.4.1", "ARG BLENDER_VERSION=3.3.21"))
    assert context_hash(settings, "worker", "sha256:base") != same  # 3.3.21: its release archive instead
    api_file.write_text(api_file.read_text().replace("ARG BLENDER_VERSION=3.3.21", "ARG BLENDER_VERSION=1.2.3"))
    with pytest.raises(BlenderError, match="Blender 1.2.3 is not in"):  # not in the versions file: no worker image
        context_hash(settings, "worker", "sha256:base")
