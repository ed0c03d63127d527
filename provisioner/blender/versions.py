"""The versions file (`blender_versions.yaml`): its schema, its loading, and Blender version strings."""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from provisioner.errors import BlenderError, ConfigError

FORMAT = 1
PLATFORMS = ("linux-x64", "macos-arm64", "windows-x64")
VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

VersionKey = Annotated[str, StringConstraints(pattern=VERSION_RE.pattern)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_RE.pattern)]


@dataclass(frozen=True, order=True)
class BlenderVersion:
    major: int
    minor: int
    patch: int

    @property
    def series(self) -> str:
        """ "X.Y": the release folder (`BlenderX.Y`) and the data folder next to the binary."""
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def is_version(text: str) -> bool:
    return bool(VERSION_RE.match(text))


def parse_version(text: str) -> BlenderVersion:
    m = VERSION_RE.match(text.strip())
    if not m:
        raise BlenderError(f"{text!r} is not a Blender version: expected X.Y.Z, e.g. 3.4.1")
    return BlenderVersion(int(m[1]), int(m[2]), int(m[3]))


def series(version: str) -> str:
    """'3.4.1' -> '3.4'."""
    return parse_version(version).series


def host_platform() -> str | None:
    """This host's platform key in the versions file, or None when Blender publishes none for it."""
    system = _platform.system().lower()
    machine = _platform.machine().lower()
    if system == "linux" and machine in ("x86_64", "amd64"):
        return "linux-x64"
    if system == "darwin" and machine in ("arm64", "aarch64"):
        return "macos-arm64"
    if system == "windows" and machine in ("amd64", "x86_64"):
        return "windows-x64"
    return None


def archive_name(version: str, platform: str = "linux-x64") -> str:
    """The official file name, e.g. blender-3.4.1-linux-x64.tar.xz."""
    ext = {"linux-x64": "tar.xz", "macos-arm64": "dmg", "windows-x64": "zip"}[platform]
    return f"blender-{version}-{platform}.{ext}"


def release_path(version: str, platform: str = "linux-x64") -> str:
    """The file's path under a download.blender.org-shaped root: release/BlenderX.Y/<file>."""
    return f"release/Blender{series(version)}/{archive_name(version, platform)}"


# --- schema ---------------------------------------------------------------------------------


class Download(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+/\S+$")]
    sha256: Sha256 | None  # the key is required; null means "no published checksum" (--insecure only)


class AptPin(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    package: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]
    version: Annotated[str, StringConstraints(pattern=r"^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")]
    distro: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]*$")] | None = None
    binary: str = Field("/usr/bin/blender", pattern=r"^/")

    @property
    def spec(self) -> str:
        """What apt-get installs: package=version."""
        return f"{self.package}={self.version}"


class VersionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    linux_x64: Download = Field(alias="linux-x64")
    macos_arm64: Download | None = Field(None, alias="macos-arm64")
    windows_x64: Download | None = Field(None, alias="windows-x64")
    apt: AptPin | None = None

    def download(self, platform: str) -> Download | None:
        value: Download | None = getattr(self, platform.replace("-", "_"))
        return value


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    versions: dict[VersionKey, VersionEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> _Document:
        if self.format != FORMAT:
            raise _KeyError(("format",), f"{self.format} is not a format this renderdev reads (it reads {FORMAT})")
        for version, entry in self.versions.items():
            for platform in PLATFORMS:
                dl = entry.download(platform)
                if dl is None:
                    continue
                name = PurePosixPath(urlsplit(dl.url).path).name
                if name != archive_name(version, platform):
                    raise _KeyError(
                        ("versions", version, platform, "url"),
                        f"names {name!r}, expected {archive_name(version, platform)!r} for version {version}",
                    )
            if entry.apt is not None:
                upstream = entry.apt.version.split(":", 1)[-1]
                if not re.match(rf"^{re.escape(version)}(?![0-9.])", upstream):
                    raise _KeyError(
                        ("versions", version, "apt", "version"),
                        f"{entry.apt.version!r} is not a package of Blender {version}",
                    )
        return self


class _KeyError(ValueError):
    """A cross-field problem that names its key (raised inside the model validator)."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        self.loc = loc
        super().__init__(msg)


# --- the loaded file ------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionsFile:
    path: Path
    versions: dict[str, VersionEntry]

    def known(self) -> list[str]:
        return sorted(self.versions, key=parse_version)

    def entry(self, version: str) -> VersionEntry:
        """The entry for version; an error naming the file and the known versions when it is not there."""
        found = self.versions.get(version)
        if found is None:
            raise BlenderError(
                f"Blender {version} is not in {self.path}; known versions: {', '.join(self.known())}",
                hint=f"add {version} with its official URL and sha256 to {self.path}, "
                "or use a version listed there (--version V)",
            )
        return found


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line {first + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_versions(path: Path) -> VersionsFile:
    """Read and validate the versions file; any problem is a ConfigError naming the file and the key."""
    hint = f"fix {path} (its header comment shows the layout)"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the Blender versions file {path}: {exc.strerror or exc}",
            hint="pass --versions-file PATH or set RENDERDEV_BLENDER_VERSIONS_FILE",
        ) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc.problem}", hint=hint) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {exc.problem}", hint=hint) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", hint=hint) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'versions' key, got {type(data).__name__}", hint=hint)
    try:
        doc = _Document.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors()), hint=hint) from exc
    return VersionsFile(path=path, versions=dict(doc.versions))


def _describe(err: Any) -> str:
    loc = tuple(str(p) for p in err["loc"])
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _KeyError):
        return f"{'.'.join(ctx_error.loc)}: {ctx_error}"
    kind = err["type"]
    value = err.get("input")
    if loc and loc[-1] == "[key]":
        key = ".".join(loc[:-1])
        return f'{key}: version key {value!r} is not X.Y.Z (write it quoted, e.g. "3.4.1")'
    key = ".".join(loc) or "(top level)"
    if kind == "missing":
        return f"{key}: missing (required)"
    if kind == "extra_forbidden":
        if len(loc) == 3 and loc[0] == "versions":
            allowed = ", ".join((*PLATFORMS, "apt"))
            return f"{key}: unknown platform {loc[-1]!r} (allowed: {allowed})"
        return f"{key}: unknown key"
    if kind == "string_pattern_mismatch":
        if loc[-1] == "sha256":
            return f"{key}: {value!r} is not a sha256 (64 lowercase hex digits)"
        if loc[-1] == "url":
            return f"{key}: {value!r} is not an http(s) URL"
        return f"{key}: {value!r} has the wrong form (expected /{err['ctx']['pattern']}/)"
    if kind == "string_type" and loc[-1] in ("sha256", "version", "url"):
        return f"{key}: {value!r} is not text (write it in quotes)"
    if kind == "too_short" and loc == ("versions",):
        return f"{key}: lists no version"
    return f"{key}: {err['msg']} (got {value!r})"
