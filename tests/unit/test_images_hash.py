"""The context hash that decides whether an image (or the wheelhouse) is rebuilt."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner.config import REPO_ROOT, load_settings
from provisioner.digest import digest_tree, tree_files
from provisioner.images import context_hash


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_same_content_gives_the_same_digest_whatever_the_order_and_times(tmp_path: Path) -> None:
    files = {"Dockerfile": "FROM x\n", "entrypoint.sh": "#!/bin/sh\n", "conf/a.conf": "a=1\n"}
    _write(tmp_path / "one", files)
    _write(tmp_path / "two", dict(reversed(list(files.items()))))
    past = time.time() - 86400
    os.utime(tmp_path / "two" / "Dockerfile", (past, past))
    assert digest_tree(tmp_path / "one") == digest_tree(tmp_path / "two")
    assert digest_tree(tmp_path / "one") == digest_tree(tmp_path / "one")


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "Dockerfile").write_text("FROM y\n"),
        lambda root: (root / "entrypoint.sh").chmod(0o755),
        lambda root: (root / "entrypoint.sh").rename(root / "start.sh"),
        lambda root: (root / "new.txt").write_text(""),
        lambda root: (root / "link").symlink_to("Dockerfile"),
    ],
    ids=["content", "exec-bit", "rename", "new-file", "symlink"],
)
def test_any_change_that_reaches_the_build_changes_the_digest(tmp_path: Path, change: Callable[[Path], object]) -> None:
    _write(tmp_path, {"Dockerfile": "FROM x\n", "entrypoint.sh": "#!/bin/sh\n"})
    before = digest_tree(tmp_path)
    change(tmp_path)
    assert digest_tree(tmp_path) != before


def test_excluded_subtree_and_tool_caches_do_not_count(tmp_path: Path) -> None:
    _write(tmp_path, {"Dockerfile": "FROM x\n", "requirements.txt": "redis==1\n"})
    before = digest_tree(tmp_path, exclude=("wheels",))
    _write(
        tmp_path,
        {
            "wheels/deps/x-1-py3-none-any.whl": "zip",
            "pkg/__pycache__/m.cpython-311.pyc": "bytes",
            "pkg/old.pyc": "bytes",
        },
    )
    assert digest_tree(tmp_path, exclude=("wheels",)) == before
    assert tree_files(tmp_path, exclude=("wheels",)) == ["Dockerfile", "requirements.txt"]


def test_extra_values_are_part_of_the_digest(tmp_path: Path) -> None:
    _write(tmp_path, {"Dockerfile": "FROM x\n"})
    assert digest_tree(tmp_path, extra={"base": "sha256:a"}) != digest_tree(tmp_path, extra={"base": "sha256:b"})
    assert digest_tree(tmp_path, extra={"a": "1", "b": "2"}) == digest_tree(tmp_path, extra={"b": "2", "a": "1"})


def test_image_context_hash_is_stable_and_tracks_context_base_and_requirements(tmp_path: Path) -> None:
    compose = tmp_path / "compose"
    shutil.copytree(REPO_ROOT / "compose", compose, ignore=shutil.ignore_patterns("wheels"))
    settings = load_settings(compose_dir=compose, state_dir=tmp_path / "state")

    redis_hash = context_hash(settings, "redis", "sha256:base1")
    assert context_hash(settings, "redis", "sha256:base1") == redis_hash
    assert context_hash(settings, "redis", "sha256:base2") != redis_hash
    assert context_hash(settings, "db", "sha256:base1") != redis_hash

    with (compose / "redis" / "entrypoint.sh").open("a") as fh:
        fh.write("# edited\n")
    assert context_hash(settings, "redis", "sha256:base1") != redis_hash

    api_hash = context_hash(settings, "api", "sha256:base1")
    _write(compose / "api", {"wheels/deps/anything.whl": "not part of the hash"})
    assert context_hash(settings, "api", "sha256:base1") == api_hash
    with (compose / "api" / "requirements.txt").open("a") as fh:
        fh.write("# edited\n")
    assert context_hash(settings, "api", "sha256:base1") != api_hash


def test_wheelhouse_inputs_read_once_by_a_plan_give_the_same_answers(tmp_path: Path) -> None:
    """plan_images reads the wheelhouse's inputs once for the wheelhouse step and the api image's hash: the same
    answers as reading them in each, and a changed input read afterwards still changes them both."""
    from provisioner.wheelhouse import STAMP, inputs_digest, part_digests, stale_parts, wheelhouse_dir

    compose = tmp_path / "compose"
    shutil.copytree(REPO_ROOT / "compose", compose, ignore=shutil.ignore_patterns("wheels"))
    settings = load_settings(compose_dir=compose, state_dir=tmp_path / "state")
    parts = part_digests(settings)
    for part, digest in parts.items():
        _write(wheelhouse_dir(settings) / part, {STAMP: digest + "\n"})

    assert inputs_digest(settings, parts=parts) == inputs_digest(settings)
    assert stale_parts(settings, parts=parts) == stale_parts(settings) == []
    api_hash = context_hash(settings, "api", "sha256:base1")
    assert context_hash(settings, "api", "sha256:base1", wheelhouse_parts=parts) == api_hash

    with (compose / "api" / "requirements.txt").open("a") as fh:
        fh.write("# edited\n")
    now = part_digests(settings)
    assert stale_parts(settings, parts=now) == stale_parts(settings) == ["deps"]
    assert context_hash(settings, "api", "sha256:base1", wheelhouse_parts=now) != api_hash
    assert context_hash(settings, "api", "sha256:base1", wheelhouse_parts=now) == context_hash(
        settings, "api", "sha256:base1"
    )
