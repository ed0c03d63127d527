"""Settings: embedded defaults, overridden by a project file, then RENDERDEV_* environment variables,
then keyword arguments (the task's options). Read when asked for (`load_settings`), never at import.

Project file: `renderdev.toml` in the current folder, or the file named by RENDERDEV_CONFIG.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from provisioner.errors import ConfigError
from renderfarm.settings import FarmSettings, Reliability

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "RENDERDEV_"
BlenderSource = Literal["auto", "installed", "mirror", "official", "apt"]
SERVICES = ("redis", "db", "api")
PORT_FIELDS = frozenset({"redis_port", "db_port", "api_port"})


def _project_file() -> Path:
    return Path(os.environ.get("RENDERDEV_CONFIG", "renderdev.toml"))


DEFAULT_PROJECT = "renderdev"  # the compose project when none is named (RENDERDEV_PROJECT)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # compose stack
    project: str = Field(DEFAULT_PROJECT, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="compose project name")
    compose_dir: Path = REPO_ROOT / "compose"
    state_dir: Path = Path("~/.local/state/renderdev")
    bind_host: Literal["127.0.0.1"] = "127.0.0.1"
    redis_port: int = Field(6379, ge=1, le=65535)
    db_port: int = Field(5432, ge=1, le=65535)
    api_port: int = Field(8000, ge=1, le=65535)
    db_name: str = Field("renderfarm", pattern=r"^[a-z_][a-z0-9_]*$")
    db_user: str = Field("renderfarm", pattern=r"^[a-z_][a-z0-9_]*$")
    health_timeout: float = Field(180.0, gt=0)
    hd_price: int = Field(FarmSettings.hd_price, ge=0, description="credits an HD render costs")
    heartbeat_ttl: float = Field(
        Reliability.heartbeat_ttl, ge=1, le=3600, description="seconds a silent render worker counts as alive"
    )
    reap_interval: float = Field(
        Reliability.reap_interval, ge=0.1, le=3600, description="seconds between looks for lost workers"
    )
    max_lost: int = Field(
        Reliability.max_lost, ge=0, le=100, description="times a job may lose its worker before it fails"
    )
    warm_blender: bool = True  # keep one Blender loaded per worker; False: one Blender process per job
    warm_max_jobs: int = Field(50, ge=1, le=100_000, description="jobs a warm Blender serves before a fresh one")
    live: bool = False  # the api runs the working tree's renderfarm/ (live_source) with reload: invoke setup --live
    live_source: Path = REPO_ROOT / "renderfarm"
    preemption_url: str | None = None  # cloud metadata endpoint a worker watches for a preemption notice
    preemption_poll: float = Field(5.0, gt=0, le=3600)
    database_url: str | None = None  # seed-credits: another database than the stack's (needs --force)
    # An IPv4 address of this host the stack is also reached on, with TLS only (provisioner/exposure.py); "none"
    # withdraws it. Unset: as remembered in <state>/<project>/expose.json.
    expose: str | None = None
    registry_port: int = Field(5000, ge=1, le=65535, description="port of a swarm deploy's image registry")

    # images
    base_image: str = "renderdev/base:bookworm"
    base_pull: str = "debian:bookworm-slim"
    debian_mirror: str = "http://deb.debian.org/debian"
    image_prefix: str = "renderdev"
    image_tag: str = "dev"

    # blender on the host
    api_container: str | None = None
    blender_versions_file: Path = REPO_ROOT / "blender_versions.yaml"
    blender_install_root: Path = Path("~/.local/share/renderdev/blender")
    blender_link: Path = Path("/usr/bin/blender")
    blender_mirror: str | None = None
    blender_source: BlenderSource = "auto"
    blender_official_base: str = "https://download.blender.org/release"
    blender_version_env_keys: list[str] = ["BLENDER_VERSION"]
    blender_version_label_keys: list[str] = ["org.blender.version", "blender.version"]
    download_timeout: float = Field(30.0, gt=0)

    # shell aliases
    aliases_file: Path = Path("~/.config/renderdev/aliases.sh")
    rc_files: list[Path] = [Path("~/.bashrc"), Path("~/.zshrc")]

    @field_validator(
        "live_source",
        "compose_dir",
        "state_dir",
        "blender_versions_file",
        "blender_install_root",
        "blender_link",
        "aliases_file",
    )
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(v))

    @field_validator("expose")
    @classmethod
    def _none_word(cls, v: str | None) -> str | None:
        return None if v is None else ("none" if v.strip().lower() in ("", "none") else v.strip())

    @field_validator("rc_files")
    @classmethod
    def _expand_all(cls, v: list[Path]) -> list[Path]:
        return [Path(os.path.expanduser(p)) for p in v]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_project_file()),
        )

    _explicit: frozenset[str] | None = PrivateAttr(default=None)

    # derived paths: one place each
    @property
    def project_state_dir(self) -> Path:
        return self.state_dir / self.project

    @property
    def secrets_file(self) -> Path:
        return self.project_state_dir / "secrets.env"

    @property
    def renders_dir(self) -> Path:
        """Where host workers write images; the api container mounts it read-only to serve them."""
        return self.project_state_dir / "renders"

    @property
    def compose_file(self) -> Path:
        return self.compose_dir / "compose.yaml"

    @property
    def compose_files(self) -> list[Path]:
        """compose.yaml, in live mode the override that runs the api on the working tree's code, and when exposed
        the one that publishes the TLS ports on the exposed address."""
        return [
            self.compose_file,
            *([self.compose_dir / "live.yaml"] if self.live else []),
            *([self.compose_dir / "expose.yaml"] if self.exposed_address else []),
        ]

    @property
    def exposed_address(self) -> str | None:
        """The address the stack is exposed on (TLS only), or None: 127.0.0.1 only."""
        return None if self.expose in (None, "none") else self.expose

    @property
    def expose_file(self) -> Path:
        """The exposure renderdev was last asked for (JSON), kept for the runs that do not say."""
        return self.project_state_dir / "expose.json"

    @property
    def tls_dir(self) -> Path:
        """The stack's CA and server certificate (provisioner/tls.py)."""
        return self.project_state_dir / "tls"

    def image(self, name: str) -> str:
        return f"{self.image_prefix}/{name}:{self.image_tag}"

    @property
    def ports_file(self) -> Path:
        """Host ports renderdev chose for this project because the defaults were taken (JSON)."""
        return self.project_state_dir / "ports.json"

    @property
    def explicit_ports(self) -> set[str]:
        """The port settings given by an option, a RENDERDEV_* variable or the project file: never changed for
        the user (a taken one is refused). The others are renderdev's to choose."""
        return set(self._explicit if self._explicit is not None else PORT_FIELDS & self.model_fields_set)

    def as_environment(self) -> dict[str, str]:
        """Every setting as the RENDERDEV_* variable that gives it back: what a subprocess (`invoke worker`, a
        test's worker) needs to see exactly these settings. Unset optional settings are left out; lists are JSON."""
        return {
            f"{ENV_PREFIX}{name.upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in self.model_dump(mode="json").items()
            if value is not None
        }


def load_settings(**overrides: Any) -> Settings:
    """Read the settings now. Options given as None are left to the file/environment/defaults."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return _with_remembered_exposure(_with_remembered_ports(Settings(**given)))
    except ValidationError as exc:
        problems = []
        origins: list[str] = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(settings)"
            origin = _origin(str(err["loc"][0]) if err["loc"] else "", given)
            origins.append(origin)
            problems.append(f"{key}={err.get('input')!r} (from {origin}): {err['msg']}")
        raise ConfigError(
            "invalid renderdev setting: " + "; ".join(problems),
            hint=f"fix {' and '.join(dict.fromkeys(origins))}, see README 'Configuration'",
        ) from exc
    except (OSError, ValueError) as exc:  # e.g. a project file that is not TOML
        raise ConfigError(f"cannot read renderdev settings from {_project_file()}: {exc}") from exc


def _with_remembered_ports(settings: Settings) -> Settings:
    """Ports not given explicitly come from the project's ports file, when renderdev chose them earlier."""
    explicit = frozenset(PORT_FIELDS & settings.model_fields_set)
    try:
        remembered = json.loads(settings.ports_file.read_text())
    except (OSError, ValueError):
        remembered = {}
    chosen = {
        k: v
        for k, v in (remembered.items() if isinstance(remembered, dict) else [])
        if k in PORT_FIELDS and k not in explicit and isinstance(v, int) and 1 <= v <= 65535
    }
    out = settings.model_copy(update=chosen) if chosen else settings
    out._explicit = explicit
    return out


def _with_remembered_exposure(settings: Settings) -> Settings:
    """An exposure not given (option, variable, file) is the one remembered in the project's expose.json."""
    if "expose" in settings.model_fields_set:
        return settings
    try:
        remembered = json.loads(settings.expose_file.read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return settings
    if not isinstance(remembered, str):
        return settings
    out = settings.model_copy(update={"expose": remembered})
    out._explicit = settings._explicit
    return out


def _origin(key: str, given: dict[str, Any]) -> str:
    """Where a setting's value came from, in words a user can act on: the option, the variable or the file."""
    if key in given:
        return "the task's option"
    if f"RENDERDEV_{key.upper()}" in os.environ:
        return f"RENDERDEV_{key.upper()}"
    return str(_project_file())
