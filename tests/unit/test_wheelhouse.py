"""The api wheelhouse is rebuilt only when its inputs change, part by part."""

from __future__ import annotations

from pathlib import Path

from provisioner.config import REPO_ROOT, load_settings
from provisioner.console import make_console
from provisioner.plan import StepState
from provisioner.wheelhouse import (
    STAMP,
    part_digests,
    plan_wheelhouse,
    project_digest,
    project_sources,
    stale_parts,
    wheelhouse_dir,
)

PYPROJECT = """
[project]
name = "demo"
version = "0"
[tool.setuptools.packages.find]
include = ["alpha*"]
"""


def _project(root: Path) -> Path:
    (root / "alpha").mkdir(parents=True)
    (root / "alpha" / "__init__.py").write_text("")
    (root / "alpha" / "core.py").write_text("X = 1\n")
    (root / "beta").mkdir()
    (root / "beta" / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root


def test_project_sources_follow_pyproject_includes(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    (root / "alpha" / "__pycache__").mkdir()
    (root / "alpha" / "__pycache__" / "core.cpython-311.pyc").write_text("")
    assert project_sources(root, ()) == ["pyproject.toml", "alpha/__init__.py", "alpha/core.py"]
    assert project_sources(root, ("alpha", "beta")) == project_sources(root, ())
    assert project_sources(root, ("beta",)) == ["pyproject.toml"]


def test_project_digest_ignores_what_the_wheel_does_not_hold(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    before = project_digest(root, ())
    (root / "beta" / "other.py").write_text("")
    (root / "tests" / "test_y.py").write_text("")
    assert project_digest(root, ()) == before
    (root / "alpha" / "core.py").write_text("X = 2\n")
    assert project_digest(root, ()) != before


def test_the_image_gets_renderfarm_and_not_the_host_tool() -> None:
    sources = project_sources(REPO_ROOT)
    assert "pyproject.toml" in sources and "renderfarm/core.py" in sources
    assert not any(s.startswith(("provisioner/", "tests/")) for s in sources)


def test_stamps_decide_which_parts_are_stale(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    compose = tmp_path / "compose"
    (compose / "api").mkdir(parents=True)
    (compose / "api" / "requirements.txt").write_text("redis==5.0.0\n")
    settings = load_settings(compose_dir=compose, state_dir=tmp_path / "state")
    console = make_console()

    assert stale_parts(settings, root) == ["deps", "project"]
    assert plan_wheelhouse(settings, console, root).state is StepState.CHANGE

    for part, digest in part_digests(settings, root).items():
        (wheelhouse_dir(settings) / part).mkdir(parents=True)
        (wheelhouse_dir(settings) / part / STAMP).write_text(digest + "\n")
    assert stale_parts(settings, root) == []
    step = plan_wheelhouse(settings, console, root)
    assert step.state is StepState.OK and step.apply is None

    (compose / "api" / "requirements.txt").write_text("redis==5.0.1\n")
    assert stale_parts(settings, root) == ["deps"]
    with (root / "pyproject.toml").open("a") as fh:
        fh.write("# edited\n")
    assert stale_parts(settings, root) == ["deps", "project"]
