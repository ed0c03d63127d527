"""`invoke snapshot` / `invoke restore`: save the stack's data before an experiment and put it back after.

A snapshot is a folder under the project's state folder, `snapshots/<name>/`:
- `db.dump`: `pg_dump -Fc` of the database, made inside the db container;
- `redis.rdb`: a consistent RDB of Redis (`SAVE`), copied out of the redis container;
- `manifest.json`: when, the commit, the Blender version the api declares, each file's size and sha256.
It is written in a staging folder and renamed into place: a failed snapshot leaves nothing.

Restore checks everything first (manifest, checksums, `pg_restore --list` of the dump, `redis-check-rdb` of the
RDB) and refuses while render workers are connected, naming them; only then does it stop Redis, replace its data
(the RDB becomes the base of a fresh AOF, which Redis 7 loads on start: a plain dump.rdb is ignored while
`appendonly yes`), start it again, wait for it to be healthy, and `pg_restore --clean --if-exists` the database
in one transaction.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.config import REPO_ROOT, Settings
from provisioner.dockerapi import service_container
from provisioner.errors import ConfigError, DockerError, RenderdevError
from provisioner.fsops import atomic_write_text, staging_dir
from provisioner.plan import Step, StepState

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container
    from rich.console import Console

FORMAT = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DB_FILE, REDIS_FILE, MANIFEST = "db.dump", "redis.rdb", "manifest.json"
CHUNK = 1 << 20
REDIS_DATA = "/data"
RESTORE_TIMEOUT = 120.0
# The multi-part AOF Redis 7 starts from: the snapshot's RDB as its base, an empty increment.
AOF_DIR, AOF_BASE, AOF_INCR = "appendonlydir", "appendonly.aof.1.base.rdb", "appendonly.aof.1.incr.aof"


class SnapshotError(RenderdevError):
    """A snapshot cannot be made, found, trusted or restored."""


@dataclass(frozen=True)
class Snapshot:
    name: str
    folder: Path
    manifest: dict[str, Any]

    @property
    def created_at(self) -> str:
        return str(self.manifest.get("created_at", "?"))

    @property
    def size(self) -> int:
        return sum(int(f.get("bytes", 0)) for f in self.manifest.get("files", {}).values())


def snapshots_dir(settings: Settings) -> Path:
    return settings.project_state_dir / "snapshots"


def check_name(name: str) -> str:
    """Names become folder names: an allow-list, so no path can be smuggled in."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"not a snapshot name: {name!r} (letters, digits, '.', '_' and '-', at most 64, not starting with . or -)",
            hint="e.g. invoke snapshot --name before-migration",
        )
    return name


def default_name() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------- taking one


def plan_snapshot(client: docker.DockerClient, settings: Settings, name: str) -> list[Step]:
    check_name(name)
    target = snapshots_dir(settings) / name
    if target.exists():
        raise SnapshotError(
            f"snapshot {name} of project {settings.project} already exists ({target})",
            hint=f"restore it (invoke restore {name}) or pick another: invoke snapshot --name NAME",
        )
    _running(client, settings, "db")
    _running(client, settings, "redis")
    what = f"pg_dump of {settings.db_name}, Redis SAVE, manifest"
    return [
        Step("snapshot", f"snapshot {name} ({target})", StepState.CHANGE, what, lambda: take(client, settings, name))
    ]


def take(client: docker.DockerClient, settings: Settings, name: str) -> str:
    """Dump the database and Redis into snapshots/<name>/ (staged, then renamed). Returns a summary."""
    target = snapshots_dir(settings) / check_name(name)
    with staging_dir(target) as tmp:
        _dump_db(client, settings, tmp / DB_FILE)
        _save_redis(client, settings, tmp / REDIS_FILE)
        manifest = {
            "format": FORMAT,
            "name": name,
            "project": settings.project,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "blender_version": _blender_version(client, settings),
            "files": {
                f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in (DB_FILE, REDIS_FILE)
            },
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n", mode=0o600)
        tmp.chmod(0o700)
        tmp.rename(target)
    return f"{_size(Snapshot(name, target, manifest).size)}; restore it with: invoke restore {name}"


def _dump_db(client: docker.DockerClient, settings: Settings, out: Path) -> None:
    db = _running(client, settings, "db")
    argv = ["pg_dump", "--format=custom", "-U", settings.db_user, "-d", settings.db_name]
    with out.open("wb") as f:
        _exec(client, db, argv, user="postgres", stdout=f)
    out.chmod(0o600)


def _save_redis(client: docker.DockerClient, settings: Settings, out: Path) -> None:
    import redis as redis_lib

    from provisioner.services import redis_url

    container = _running(client, settings, "redis")
    with redis_lib.Redis.from_url(redis_url(settings)) as r:
        r.save()  # blocks Redis for the save: the RDB is one consistent point in time
        filename = str(r.config_get("dbfilename").get("dbfilename", "dump.rdb"))
    stream, _ = container.get_archive(f"{REDIS_DATA}/{filename}")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(filename)
        if member is None:
            raise SnapshotError(f"Redis wrote no {filename} in {container.name}:{REDIS_DATA}")
        with out.open("wb") as f:
            shutil.copyfileobj(member, f, CHUNK)
    out.chmod(0o600)


# ---------------------------------------------------------------- listing


def list_snapshots(settings: Settings) -> list[Snapshot]:
    folder = snapshots_dir(settings)
    if not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and NAME.fullmatch(p.name)):
        try:
            found.append(load(settings, sub.name, verify=False))
        except SnapshotError:
            continue  # not a snapshot of ours (or a broken one): restore names what is wrong
    return sorted(found, key=lambda s: s.created_at)


def load(settings: Settings, name: str, *, verify: bool = True) -> Snapshot:
    """The snapshot's manifest, checked: a known format, this project, and (verify) every file present with its
    size and sha256."""
    folder = snapshots_dir(settings) / check_name(name)
    hint = f"list them: invoke snapshot --list (project {settings.project})"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise SnapshotError(
            f"no snapshot {name} in project {settings.project} ({folder / MANIFEST} is missing)", hint=hint
        ) from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"snapshot {name}: {folder / MANIFEST} is unreadable: {exc}", hint=hint) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(
            f"snapshot {name}: format {manifest.get('format') if isinstance(manifest, dict) else '?'} is not"
            f" {FORMAT} (made by another renderdev version)"
        )
    snap = Snapshot(name, folder, manifest)
    if verify:
        for fname in (DB_FILE, REDIS_FILE):
            want = manifest.get("files", {}).get(fname) or {}
            path = folder / fname
            if not path.is_file():
                raise SnapshotError(f"snapshot {name} is incomplete: {path} is missing", hint=hint)
            if path.stat().st_size != want.get("bytes") or _sha256(path) != want.get("sha256"):
                raise SnapshotError(
                    f"snapshot {name} is corrupt: {path} does not match its manifest (size or sha256)", hint=hint
                )
    return snap


# ---------------------------------------------------------------- restoring


def plan_restore(client: docker.DockerClient, settings: Settings, name: str) -> list[Step]:
    snap = load(settings, name)
    _refuse_with_workers(settings)
    _running(client, settings, "db")
    _running(client, settings, "redis")
    what = f"from {snap.created_at}: stop redis, load its RDB, start it; pg_restore --clean {settings.db_name}"
    return [
        Step("restore", f"restore snapshot {name}", StepState.CHANGE, what, lambda: restore(client, settings, snap))
    ]


def restore(client: docker.DockerClient, settings: Settings, snap: Snapshot) -> str:
    """Check both files in the containers' own tools, then replace Redis's data and the database."""
    db, rds = _running(client, settings, "db"), _running(client, settings, "redis")
    dump_in_db = f"/tmp/renderdev-restore-{snap.name}.dump"
    _put_file(db, snap.folder / DB_FILE, dump_in_db)
    try:
        _exec(client, db, ["pg_restore", "--list", dump_in_db], user="postgres")
        _check_rdb(client, rds, snap.folder / REDIS_FILE)
        _replace_redis_data(client, settings, rds, snap.folder / REDIS_FILE)
        argv = ["pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner", "-U", settings.db_user]
        _exec(client, db, [*argv, "-d", settings.db_name, dump_in_db], user="postgres")
    finally:
        _exec(client, db, ["rm", "-f", dump_in_db], check=False)
    return f"database and Redis as at {snap.created_at}"


def _refuse_with_workers(settings: Settings) -> None:
    import redis as redis_lib
    from rq import Worker

    from provisioner.services import redis_url

    with redis_lib.Redis.from_url(redis_url(settings)) as r:
        workers = sorted(w.name for w in Worker.all(connection=r))
    if workers:
        raise SnapshotError(
            f"render workers are connected to project {settings.project}: {', '.join(workers)}; a restore under"
            " them would lose or repeat their jobs",
            hint="stop them (Ctrl+C, or SIGTERM: their jobs go back to sq), then: invoke restore NAME",
        )


def _check_rdb(client: docker.DockerClient, redis_container: Container, rdb: Path) -> None:
    """redis-check-rdb in a throw-away container of the redis image: a corrupt file is refused before Redis stops."""
    image = redis_container.image.id
    out = _run_helper(client, image, ["redis-check-rdb", "/snapshot/" + REDIS_FILE], {str(rdb.parent): "/snapshot"})
    if "RDB looks OK" not in out:
        raise SnapshotError(f"snapshot {rdb.parent.name}: {rdb} is not a valid RDB file:\n{out[-1000:]}")


def _replace_redis_data(client: docker.DockerClient, settings: Settings, container: Container, rdb: Path) -> None:
    from provisioner.services import wait_healthy

    volume = next((m["Name"] for m in container.attrs["Mounts"] if m.get("Destination") == REDIS_DATA), None)
    if volume is None:
        raise SnapshotError(f"the redis container {container.name} has no volume at {REDIS_DATA}")
    new = f"{REDIS_DATA}/{AOF_DIR}.new"
    script = (
        f"set -e; rm -rf {new}; mkdir {new}; cp /snapshot/{REDIS_FILE} {new}/{AOF_BASE}; : > {new}/{AOF_INCR};"
        f" printf 'file {AOF_BASE} seq 1 type b\\nfile {AOF_INCR} seq 1 type i\\n' > {new}/appendonly.aof.manifest;"
        f" rm -rf {REDIS_DATA}/{AOF_DIR} {REDIS_DATA}/dump.rdb; mv {new} {REDIS_DATA}/{AOF_DIR};"
        f" chown -R redis:redis {REDIS_DATA}"
    )
    container.stop(timeout=10)
    try:
        _run_helper(
            client, container.image.id, ["sh", "-c", script], {str(rdb.parent): "/snapshot", volume: REDIS_DATA}
        )
    finally:
        container.start()
    wait_healthy(client, settings, time.monotonic() + RESTORE_TIMEOUT, services=["redis"])


# ---------------------------------------------------------------- docker helpers


def _running(client: docker.DockerClient, settings: Settings, service: str) -> Container:
    c = service_container(client, settings.project, service)
    if c is None or c.status != "running":
        raise SnapshotError(
            f"service {service} of compose project {settings.project} is not running", hint="invoke services"
        )
    return c


def _exec(
    client: docker.DockerClient,
    container: Container,
    argv: list[str],
    *,
    user: str = "",
    stdout: io.BufferedWriter | None = None,
    check: bool = True,
) -> str:
    """Run argv in the container (docker exec, no shell); stream its stdout to `stdout` when given, else return
    it. A non-zero exit raises SnapshotError with the command, the code and stderr's tail."""
    exec_id = client.api.exec_create(container.id, argv, user=user, stdout=True, stderr=True)["Id"]
    captured, errors = bytearray(), bytearray()
    for out, err in client.api.exec_start(exec_id, stream=True, demux=True):
        if out:
            if stdout is not None:
                stdout.write(out)
            else:
                captured += out
        if err:
            errors += err
    code = client.api.exec_inspect(exec_id)["ExitCode"]
    if check and code != 0:
        tail = errors.decode(errors="replace").strip()[-1500:]
        raise SnapshotError(f"`{' '.join(argv)}` in {container.name} exited {code}: {tail}")
    return captured.decode(errors="replace")


def _put_file(container: Container, src: Path, dest: str) -> None:
    """Copy a host file into the container (docker cp), readable by the postgres user."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tar.gettarinfo(str(src), arcname=Path(dest).name)
        info.uid = info.gid = 0
        info.mode = 0o644
        with src.open("rb") as f:
            tar.addfile(info, f)
    if not container.put_archive(str(Path(dest).parent), buf.getvalue()):
        raise DockerError(f"could not copy {src} into {container.name}:{dest}")


def _run_helper(client: docker.DockerClient, image: str, argv: list[str], mounts: dict[str, str]) -> str:
    """A throw-away container of `image` (entrypoint bypassed), with mounts {source: path}; its output."""
    from docker.errors import ContainerError

    volumes = {src: {"bind": dest, "mode": "ro" if dest == "/snapshot" else "rw"} for src, dest in mounts.items()}
    try:
        out = client.containers.run(
            image, argv, entrypoint=[], volumes=volumes, remove=True, stdout=True, stderr=True, user="root"
        )
    except ContainerError as exc:
        raise SnapshotError(f"`{' '.join(argv)}` exited {exc.exit_status}: {exc.stderr!r}"[:1500]) from exc
    return out.decode(errors="replace") if isinstance(out, bytes) else str(out)


# ---------------------------------------------------------------- small things


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _commit() -> str | None:
    from provisioner import proc

    try:
        done = proc.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], timeout=10, check=False)
    except RenderdevError:
        return None  # no git here (an installed package): the manifest says "?"
    return done.stdout.strip() or None if done.returncode == 0 else None


def _blender_version(client: docker.DockerClient, settings: Settings) -> str | None:
    from provisioner.blender.declared_version import read_declared_version

    try:
        return read_declared_version(client, settings).version
    except RenderdevError:
        return None


def describe(snaps: list[Snapshot]) -> list[str]:
    return [
        f"{s.name}  {s.created_at}  {_size(s.size)}  commit {str(s.manifest.get('commit') or '?')[:10]}"
        f"  blender {s.manifest.get('blender_version') or '?'}"
        for s in snaps
    ]


# ---------------------------------------------------------------- the tasks


def take_snapshot(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    name: str | None,
    list_only: bool,
    dry_run: bool,
) -> None:
    """`invoke snapshot`: plan, show, apply (or, with list_only, print this project's snapshots)."""
    from provisioner.plan import report, run_steps

    if list_only:
        lines = describe(list_snapshots(settings))
        console.print("\n".join(lines) if lines else f"no snapshots of project {settings.project} yet: invoke snapshot")
        return
    steps = plan_snapshot(client, settings, name or default_name())
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: snapshot"), dry_run=dry_run)


def restore_snapshot(
    client: docker.DockerClient, settings: Settings, console: Console, *, name: str, dry_run: bool
) -> None:
    """`invoke restore NAME`: every check first, then the restore."""
    from provisioner.plan import report, run_steps

    steps = plan_restore(client, settings, name)
    report(console, run_steps(console, steps, dry_run=dry_run, heading="Plan: restore"), dry_run=dry_run)
