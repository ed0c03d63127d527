"""The stack's images, built by the real code on the real engine (the `project_images` fixture). The worker image,
which only container workers need, is checked by tests/integration/test_container_workers.py: whether it exists
here depends on which tests ran before."""

from __future__ import annotations

import pytest
from docker import DockerClient

from provisioner.config import Settings
from provisioner.console import make_console
from provisioner.images import HASH_LABEL, STACK_IMAGES, context_hash, ensure_images, find_image, plan_images

pytestmark = pytest.mark.integration


def test_a_second_ensure_images_changes_nothing(docker_client: DockerClient, project_images: Settings) -> None:
    settings = project_images
    outcome = ensure_images(docker_client, settings, make_console(), only=STACK_IMAGES)
    assert outcome.changed == []
    assert len(outcome.already_right) == 2 + len(STACK_IMAGES)  # base, wheelhouse, then each image
    assert not any(step.needed for step in plan_images(docker_client, settings, make_console(), only=STACK_IMAGES))


def test_images_are_built_on_the_base_and_labelled_with_their_context(
    docker_client: DockerClient, project_images: Settings
) -> None:
    settings = project_images
    base = find_image(docker_client, settings.base_image)
    assert base is not None
    for name in STACK_IMAGES:
        image = find_image(docker_client, settings.image(name))
        assert image is not None, name
        assert image.labels[HASH_LABEL] == context_hash(settings, name, base.id)
        layers = {entry["Id"] for entry in image.history()}
        assert base.id in layers, f"{name} is not built FROM {settings.base_image}"


def test_api_image_declares_its_blender_version(docker_client: DockerClient, project_images: Settings) -> None:
    image = find_image(docker_client, project_images.image("api"))
    assert image is not None
    assert "BLENDER_VERSION=3.4.1" in image.attrs["Config"]["Env"]
    assert image.labels["org.blender.version"] == "3.4.1"
    assert image.attrs["Config"]["User"] == "renderfarm"
