"""The stack's passwords: made once, kept on the host, never printed.

- `settings.secrets_file` (mode 0600): `REDIS_PASSWORD=...` and `DB_PASSWORD=...` lines, the one source
  of truth (the shell aliases read it when a function runs);
- `<project state>/secrets/` (mode 0700) with one file per secret, which compose mounts into the
  containers at /run/secrets/<name>. Compose keeps the host file's owner and mode for such mounts
  (its uid/gid/mode keys apply to swarm only), and the services read them as their own users
  (postgres, redis, renderfarm) whose uids the host does not know: so these files are 0644, and it
  is the 0700 folder that keeps other host users out.

Existing secrets are always kept: a new password would lock the stack out of its own database volume.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

from provisioner.config import Settings
from provisioner.errors import ConfigError, HostWriteError, RenderdevError
from provisioner.fsops import atomic_write_text
from provisioner.plan import Check, Step, StepState

SECRET_NAMES = ("redis_password", "db_password")  # also the compose secret names and file names
FILE_MODE = 0o600
DIR_MODE = 0o700
MOUNTED_MODE = 0o644
HEADER = "# renderdev: the stack's passwords (generated; keep this file private)\n"


def env_key(name: str) -> str:
    return name.upper()


def secrets_dir(settings: Settings) -> Path:
    """The folder whose files compose mounts (RENDERDEV_SECRETS_DIR for compose.yaml)."""
    return settings.project_state_dir / "secrets"


def secret_path(settings: Settings, name: str) -> Path:
    return secrets_dir(settings) / name


def new_password() -> str:
    """32 URL-safe characters ([A-Za-z0-9_-]): safe in URLs, shell words and config files."""
    return _random.token_urlsafe(24)


def parse_secrets(text: str) -> dict[str, str]:
    """`KEY=value` lines (comments and blanks ignored) -> {secret name: value} for the known secrets."""
    wanted = {env_key(n): n for n in SECRET_NAMES}
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in wanted and value.strip():
            found[wanted[key]] = value.strip()
    return found


def render_secrets(values: dict[str, str]) -> str:
    return HEADER + "".join(f"{env_key(n)}={values[n]}\n" for n in SECRET_NAMES)


def _load(settings: Settings) -> dict[str, str]:
    try:
        return parse_secrets(settings.secrets_file.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise HostWriteError(f"cannot read the secrets file {settings.secrets_file}: {exc.strerror}") from exc


def read_secrets(settings: Settings) -> dict[str, str]:
    """{"redis_password": ..., "db_password": ...} from the secrets file; an error names what is missing."""
    values = _load(settings)
    missing = [env_key(n) for n in SECRET_NAMES if n not in values]
    if missing:
        raise ConfigError(
            f"the stack's secrets file {settings.secrets_file} lacks {', '.join(missing)}",
            hint="run: invoke services (it makes missing secrets and keeps existing ones)",
        )
    return values


def _pending(settings: Settings) -> list[str]:
    """What ensure_secrets would do, one phrase each (empty: all in place)."""
    values = _load(settings)
    todo = []
    missing = [n for n in SECRET_NAMES if n not in values]
    if missing:
        todo.append("generate " + ", ".join(missing))
    elif _mode(settings.secrets_file) != FILE_MODE:
        todo.append(f"set {settings.secrets_file.name} to mode 0600")
    if _mode(secrets_dir(settings)) != DIR_MODE:
        todo.append(f"make {secrets_dir(settings)} (mode 0700)")
    outdated = stale_mounts(settings, values)
    stale = [n for n in SECRET_NAMES if n in outdated or _mode(secret_path(settings, n)) != MOUNTED_MODE]
    if stale:
        todo.append("write mounted file(s) " + ", ".join(stale))
    return todo


def stale_mounts(settings: Settings, values: dict[str, str] | None = None) -> list[str]:
    """Secrets whose mounted file is missing or differs from the secrets file (or that do not exist yet).

    Rewriting such a file replaces it (a new inode), which running containers do not see: they must
    be recreated.
    """
    known = _load(settings) if values is None else values
    return [n for n in SECRET_NAMES if n not in known or _read(secret_path(settings, n)) != known[n]]


def plan_secrets(settings: Settings) -> Step:
    title = f"secrets {settings.secrets_file}"
    todo = _pending(settings)
    if not todo:
        return Step("services", title, StepState.OK, "present")
    return Step("services", title, StepState.CHANGE, "; ".join(todo), apply=lambda: ensure_secrets(settings))


def ensure_secrets(settings: Settings) -> str:
    """Generate missing secrets, keep existing ones, write the mounted files. Returns what it did."""
    todo = _pending(settings)
    values = _load(settings)
    for name in SECRET_NAMES:
        values.setdefault(name, new_password())
    atomic_write_text(settings.secrets_file, render_secrets(values), mode=FILE_MODE)
    folder = secrets_dir(settings)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, DIR_MODE)
    except OSError as exc:
        raise HostWriteError(f"cannot make the secrets folder {folder}: {exc.strerror}") from exc
    for name in SECRET_NAMES:
        atomic_write_text(secret_path(settings, name), values[name], mode=MOUNTED_MODE)
    return "; ".join(todo) or "already in place"


def mask(value: str) -> str:
    """All `invoke status` shows of a secret: its first four characters."""
    return value[:4] + "…"


def check_secrets(settings: Settings) -> list[Check]:
    """`invoke status` line: the secrets file is there, complete and private. Values are masked."""
    path, folder = settings.secrets_file, secrets_dir(settings)
    name, fix = "secrets", "invoke services"
    try:
        values = _load(settings)
    except RenderdevError as exc:
        return [Check(name, False, exc.message, fix)]
    if not path.exists():
        return [Check(name, False, f"{path} missing", fix)]
    problems = [f"lacks {env_key(n)}" for n in SECRET_NAMES if n not in values]
    for where, mode, wanted in ((path, _mode(path), FILE_MODE), (folder, _mode(folder), DIR_MODE)):
        if mode != wanted:
            now = "missing" if mode is None else f"mode {mode:04o}"
            problems.append(f"{where} is {now}, wanted mode {wanted:04o}")
    shown = ", ".join(f"{env_key(n)}={mask(values[n])}" for n in SECRET_NAMES if n in values)
    if problems:
        return [Check(name, False, f"{path}: " + "; ".join(problems), fix)]
    return [Check(name, True, f"{path} (mode 0600): {shown}")]


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
