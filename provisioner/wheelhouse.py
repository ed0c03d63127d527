"""The api image's wheelhouse: Python packages fetched on the host, since containers cannot reach PyPI.

`compose/api/wheels/` (git-ignored) has two parts, each rebuilt only when its inputs change:
  deps/     manylinux wheels for CPython 3.11.2 (Debian bookworm's python3) of compose/api/requirements.txt,
            a complete lock, fetched with --no-deps
  project/  this project's own wheel (distribution "renderdev", `pip wheel --no-deps`), built from a clean
            copy of pyproject.toml, README.md and the packages the image runs (IMAGE_PACKAGES)
Each part holds a stamp file with the digest of its inputs.

The image gets `renderfarm` only: `provisioner` is the host's tool (it needs the Docker SDK, invoke...,
none of which the image has), and leaving it out means editing it never rebuilds the api image.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from rich.console import Console

from provisioner import proc
from provisioner.config import REPO_ROOT, Settings
from provisioner.digest import digest_files, tree_files
from provisioner.errors import ConfigError, HostWriteError
from provisioner.fsops import staging_dir
from provisioner.plan import Step, StepState

STAMP = ".renderdev-inputs"
# Debian bookworm's python3, to the micro version: markers such as python_full_version < "3.11.3" depend on it.
PYTHON_VERSION = "3.11.2"
# bookworm has glibc 2.36: any of these manylinux tags runs there.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
PARTS = ("deps", "project")
IMAGE_PACKAGES = ("renderfarm",)  # top-level packages of this project that the api image runs
PIP_TIMEOUT = 900.0
PIP_HINT = "check that this host reaches the Python package index (pip config list), then re-run: invoke images"


def wheelhouse_dir(settings: Settings) -> Path:
    return settings.compose_dir / "api" / "wheels"


def requirements_file(settings: Settings) -> Path:
    return settings.compose_dir / "api" / "requirements.txt"


def project_sources(root: Path = REPO_ROOT, packages: tuple[str, ...] = IMAGE_PACKAGES) -> list[str]:
    """What the image's wheel of the project is built from: pyproject.toml, README.md, and those of
    `packages` that pyproject's package discovery includes (empty `packages`: all it includes)."""
    pyproject = root / "pyproject.toml"
    try:
        meta = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {pyproject}: {exc}") from exc
    find = meta.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    patterns = find.get("include", ["*"])
    files = [name for name in ("pyproject.toml", "README.md") if (root / name).is_file()]
    for pkg in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        wanted = not packages or pkg.name in packages
        if wanted and any(fnmatch.fnmatchcase(pkg.name, pat) for pat in patterns):
            files += [f"{pkg.name}/{rel}" for rel in tree_files(pkg)]
    return files


def deps_digest(settings: Settings) -> str:
    req = requirements_file(settings)
    if not req.is_file():
        raise ConfigError(f"the api image's requirements file is missing: {req}")
    return digest_files(req.parent, [req.name], extra={"python": PYTHON_VERSION, "platforms": " ".join(PLATFORMS)})


def project_digest(root: Path = REPO_ROOT, packages: tuple[str, ...] = IMAGE_PACKAGES) -> str:
    return digest_files(root, project_sources(root, packages))


def part_digests(settings: Settings, root: Path = REPO_ROOT) -> dict[str, str]:
    return {"deps": deps_digest(settings), "project": project_digest(root)}


def inputs_digest(settings: Settings, root: Path = REPO_ROOT, *, parts: Mapping[str, str] | None = None) -> str:
    """One digest of everything the wheelhouse is made from (part of the api image's context hash). `parts`: the
    part_digests the caller read already (a plan reads the inputs once for the wheelhouse and the images)."""
    parts = part_digests(settings, root) if parts is None else parts
    return hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(parts.items())).encode()).hexdigest()


def stale_parts(settings: Settings, root: Path = REPO_ROOT, *, parts: Mapping[str, str] | None = None) -> list[str]:
    """The parts whose stamp does not match their inputs (or that are missing). `parts`: as for inputs_digest."""
    stale = []
    for part, digest in (part_digests(settings, root) if parts is None else parts).items():
        stamp = wheelhouse_dir(settings) / part / STAMP
        try:
            current = stamp.read_text().strip()
        except OSError:
            current = ""
        if current != digest:
            stale.append(part)
    return stale


def plan_wheelhouse(
    settings: Settings, console: Console, root: Path = REPO_ROOT, *, parts: Mapping[str, str] | None = None
) -> Step:
    where = wheelhouse_dir(settings)
    title = f"api wheelhouse {where}"
    stale = stale_parts(settings, root, parts=parts)
    if not stale:
        return Step("images", title, StepState.OK, "up to date")
    what = {"deps": "download dependency wheels", "project": "build the renderdev wheel"}
    return Step(
        "images",
        title,
        StepState.CHANGE,
        "; ".join(what[p] for p in stale),
        apply=lambda: build_wheelhouse(settings, console, root=root),
    )


def build_wheelhouse(
    settings: Settings, console: Console, *, parts: list[str] | None = None, root: Path = REPO_ROOT
) -> str:
    """(Re)build the stale parts (or those named). Each part is made beside its place and renamed in."""
    todo = stale_parts(settings, root) if parts is None else parts
    digests = part_digests(settings, root)
    done = []
    if "deps" in todo:
        console.print(f"  downloading wheels for {requirements_file(settings)} ...", markup=False)
        _replace_part(settings, "deps", digests["deps"], lambda dest: _download_deps(settings, dest))
        done.append("dependency wheels downloaded")
    if "project" in todo:
        console.print(f"  building the renderdev wheel from {root} ...", markup=False)
        _replace_part(settings, "project", digests["project"], lambda dest: _build_project_wheel(root, dest))
        done.append("renderdev wheel built")
    return ", ".join(done) or "up to date"


def _download_deps(settings: Settings, dest: Path) -> None:
    abi = "cp" + "".join(PYTHON_VERSION.split(".")[:2])
    # --no-deps: requirements.txt is a complete lock. pip would evaluate dependency markers with
    # the host's Python (e.g. python_full_version < "3.11.3"), not the image's.
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--no-deps"]
    argv += ["--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS)]
    argv += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", abi]
    argv += ["-r", str(requirements_file(settings)), "-d", str(dest)]
    proc.run(argv, timeout=PIP_TIMEOUT, hint=PIP_HINT)


def _build_project_wheel(root: Path, dest: Path) -> None:
    """Build from a copy of exactly the digested sources, so the work tree gets no build/ or egg-info."""
    with tempfile.TemporaryDirectory(prefix="renderdev-wheel-") as tmp:
        src = Path(tmp) / "src"
        for rel in project_sources(root):
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, target, follow_symlinks=True)
        argv = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input"]
        argv += ["--no-deps", "-w", str(dest), str(src)]
        proc.run(argv, timeout=PIP_TIMEOUT, hint=PIP_HINT)
    if not list(dest.glob("renderdev-*.whl")):
        raise ConfigError(f"pip built no renderdev wheel from {root} into {dest}")


def _replace_part(settings: Settings, part: str, digest: str, build: Callable[[Path], None]) -> None:
    target = wheelhouse_dir(settings) / part
    with staging_dir(target) as tmp:
        build(tmp)
        (tmp / STAMP).write_text(digest + "\n")
        os.chmod(tmp, 0o755)
        old = target.with_name(f".{part}.old-{os.getpid()}")
        try:
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
        except OSError as exc:
            raise HostWriteError(f"cannot put the new wheelhouse part in place at {target}: {exc}") from exc
    shutil.rmtree(old, ignore_errors=True)
