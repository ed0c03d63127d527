"""Bad input, one table: the versions file, the api container, downloads, the link, configuration, API
payloads and CLI arguments. Each case must be refused (exit 1 from `invoke`, or a 4xx from the API) with a
message naming the thing, the value and, where the code has one, the command to run next; and the host,
the database and the queues must be exactly as they were before it.

One isolated compose project serves the module. Its tmp folder holds everything the provisioner may write
(install root with a Blender 3.3.21 installed from a loopback mirror, its link, the aliases and rc files,
the state folder), so a listing of that folder before and after each case shows any change. Archives are
built here; the mirror is a loopback HTTP server over the same folder that `--mirror FOLDER` cases read.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from docker import DockerClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from provisioner.config import Settings
from provisioner.credits import read_token
from provisioner.dockerapi import remove_by_label
from provisioner.ports import free_port
from provisioner.services import api_url, db_url, redis_url
from renderfarm.examples import example_scene_path
from renderfarm.keys import mq_index_key
from tests.faults.common import compose_stack, containers, invoke_env, new_host, run_invoke, tree

pytestmark = [pytest.mark.integration, pytest.mark.faults]

USER = "faults@example.com"  # seeded with 5 credits: less than an HD render costs (10)
MARK = f"pwned-{uuid.uuid4().hex[:8]}"  # no file named like this may ever appear
FAULT_LABEL = "org.renderdev.faults"
BASE_IMAGE = "renderdev/base:bookworm"
INSTALLED = "3.3.21"  # installed (from the loopback mirror) and linked before the first case


# ---------------------------------------------------------------- archives and versions files


Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, data


def release(version: str, *extra: Member, reports: str | None = None, binary: bool = True) -> bytes:
    """A release-shaped .tar.xz: blender-<v>-linux-x64/{blender, X.Y/datafiles/...}, then the extra members.
    Its `blender` is a script that prints `Blender <reports>` (default: the version)."""
    top = f"blender-{version}-linux-x64"
    series = version.rsplit(".", 1)[0]
    members = [member(top, tarfile.DIRTYPE)]
    if binary:
        members.append(member(f"{top}/blender", data=f"#!/bin/sh\necho 'Blender {reports or version}'\n".encode()))
    members.append(member(f"{top}/{series}/datafiles/noise.bin", data=os.urandom(256 * 1024), mode=0o644))
    for info, data in extra:
        info.name = info.name.replace("{top}", top)
        members.append((info, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=0) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def top(version: str) -> str:
    return f"blender-{version}-linux-x64"


# version -> (archive on the mirror or None, sha256 pinned in the versions file: "right", "wrong" or None)
ARCHIVES: dict[str, tuple[Callable[[], bytes] | None, str | None]] = {
    INSTALLED: (lambda: release(INSTALLED), "right"),
    "7.1.0": (None, "wrong"),  # not on the mirror: 404
    "7.1.1": (lambda: release("7.1.1")[:40_000], "right"),  # truncated, and pinned as truncated
    "7.1.2": (lambda: release("7.1.2"), "wrong"),  # checksum mismatch
    "7.1.3": (lambda: release("7.1.3", member("{top}/../../../../../../tmp/" + MARK + "-slip")), "right"),
    "7.1.4": (lambda: release("7.1.4", member(f"/tmp/{MARK}-abs")), "right"),
    "7.1.5": (lambda: release("7.1.5", member("{top}/etc", tarfile.SYMTYPE, link="../../../../etc")), "right"),
    "7.1.6": (lambda: release("7.1.6", member("{top}/null", tarfile.CHRTYPE)), "right"),
    "7.1.7": (lambda: release("7.1.7", member("{top}/passwd", tarfile.LNKTYPE, link="../etc/passwd")), "right"),
    "7.1.8": (lambda: release("7.1.8", binary=False), "right"),  # no blender binary in it
    "7.1.9": (lambda: release("7.1.9", reports="7.0.0"), "right"),  # a binary of another version
    "7.2.0": (lambda: release("7.2.0"), None),  # no published sha256
}


def versions_yaml(shas: dict[str, str | None], *, extra: str = "") -> str:
    lines = ["format: 1", "versions:"]
    for version, sha in shas.items():
        series = version.rsplit(".", 1)[0]
        url = f"https://download.blender.org/release/Blender{series}/{top(version)}.tar.xz"
        pinned = "null" if sha is None else f'"{sha}"'
        lines += [f'  "{version}":', "    linux-x64:", f"      url: {url}", f"      sha256: {pinned}"]
    return "\n".join(lines) + "\n" + extra


def installed_entry(sha: str, **changes: str) -> str:
    """The installed version's entry, with some lines changed (for the broken versions files)."""
    lines = {
        "version": f'  "{INSTALLED}":',
        "platform": "    linux-x64:",
        "url": f"      url: https://download.blender.org/release/Blender3.3/{top(INSTALLED)}.tar.xz",
        "sha256": f'      sha256: "{sha}"',
    }
    lines.update(changes)
    return "format: 1\nversions:\n" + "\n".join(v for v in lines.values() if v) + "\n"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


# ---------------------------------------------------------------- the bench: stack, mirror, obstacles


@dataclass
class Bench:
    settings: Settings
    env: dict[str, str]
    vars: dict[str, str]
    client: DockerClient
    r: redis.Redis
    engine: Engine
    api: httpx.Client
    watched: tuple[Path, ...]  # the module's tmp folder, and the read-only one
    projects: tuple[str, ...]

    def snapshot(self) -> dict[str, Any]:
        """The host (every path under the module's tmp folder, stray marker files), the stack's containers,
        the queues and the database."""
        with self.engine.connect() as conn:
            db = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM credit_entries),"
                    " (SELECT count(*) FROM renders),"
                    " (SELECT coalesce(sum(e.amount), 0) FROM credit_entries e JOIN users u ON u.id = e.user_id"
                    "  WHERE u.email = :user)"
                ),
                {"user": USER},
            ).one()
        return {
            "host": {str(folder): tree(folder) for folder in self.watched},
            "markers": sorted(str(p) for p in Path("/tmp").glob(f"{MARK}*")),
            "containers": containers(self.client, *self.projects),
            "mq": self.r.zcard(mq_index_key()),
            "pq": self.r.llen("rq:queue:pq"),
            "sq": self.r.llen("rq:queue:sq"),
            "users, credit entries, renders, balance": tuple(int(x) for x in db),
        }


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder nobody may write to, root included: a read-only bind mount (as tests/unit/test_blender_link.py)."""
    ro = tmp_path_factory.mktemp("faults-ro") / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True, capture_output=True)


def _fault_containers(client: DockerClient, run_id: str) -> dict[str, str]:
    """Stand-ins for an api container: stopped, declaring no version, an unknown one, a malformed one."""
    labels = {FAULT_LABEL: run_id}
    made: dict[str, str] = {}

    def start(
        key: str, command: list[str], env: dict[str, str] | None = None, more: dict[str, str] | None = None
    ) -> None:
        name = f"rdfault-{key}-{run_id}"
        client.containers.run(
            BASE_IMAGE, command, name=name, detach=True, labels={**labels, **(more or {})}, environment=env
        )
        made[key] = name

    start("stopped", ["true"], {"BLENDER_VERSION": INSTALLED})
    start("noversion", ["sleep", "infinity"])
    start("unknown", ["sleep", "infinity"], {"BLENDER_VERSION": "9.9.9"})
    start("malformed", ["sleep", "infinity"], more={"org.blender.version": "latest"})
    client.containers.get(made["stopped"]).wait(timeout=60)
    return made


@pytest.fixture(scope="module")
def bench(
    docker_client: DockerClient,
    project_images: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    read_only_dir: Path,
) -> Iterator[Bench]:
    host = new_host(tmp_path_factory.mktemp("faults-input") / "host", "rdfault")
    base = host.base
    www = base.parent / "www"  # the mirror: outside the watched folder, never written to

    shas: dict[str, str | None] = {}
    for version, (build, pinned) in ARCHIVES.items():
        data = build() if build is not None else b"never served"
        if build is not None:
            path = www / "release" / f"Blender{version.rsplit('.', 1)[0]}" / f"{top(version)}.tar.xz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        right = hashlib.sha256(data).hexdigest()
        shas[version] = {"right": right, "wrong": hashlib.sha256(b"another file").hexdigest(), None: None}[pinned]
    right = str(shas[INSTALLED])
    files = base.parent / "versions"
    files.mkdir()
    broken = {
        "good": versions_yaml(shas),
        "malformed": "format: 1\nversions: [\n  {unclosed\n",
        "nosha": installed_entry(right, sha256=""),
        "platform": installed_entry(right, platform="    linux-arm64:"),
        "duplicate": installed_entry(right) + "\n".join(installed_entry(right).splitlines()[2:]) + "\n",
        "badsha": installed_entry(right, sha256='      sha256: "not-a-sha"'),
        "unquoted": installed_entry(right, version="  3.3:"),
        "format": installed_entry(right).replace("format: 1", "format: 2"),
    }
    for name, body in broken.items():
        (files / f"{name}.yaml").write_text(body)

    settings = host.settings(blender_versions_file=files / "good.yaml")
    host.rc_files[0].parent.mkdir(parents=True)
    host.rc_files[0].write_text("# the user's own\n")
    host.bin.mkdir()
    (host.bin / "file").write_text("a user's own script\n")
    (host.bin / "dangling").symlink_to(f"/nonexistent-{MARK}/blender")
    (host.bin / "foreign").symlink_to("/bin/true")
    (host.bin / "folder").mkdir()
    run_id = uuid.uuid4().hex[:8]
    scratch = f"rdfault-scratch-{run_id}"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        made = _fault_containers(docker_client, run_id)
        with (
            _serve(www) as mirror,
            compose_stack(docker_client, settings),
            httpx.Client(base_url=api_url(settings), timeout=30) as api,
        ):
            env = invoke_env(settings)
            for args in (
                ("blender", "--version", INSTALLED, "--source", "mirror", "--mirror", mirror),
                ("aliases",),
                ("seed-credits", "--user", USER, "--amount", "5"),
            ):
                done = run_invoke(env, *args)
                assert done.returncode == 0, done.stdout + done.stderr
            api.headers["Authorization"] = f"Bearer {read_token(settings, USER)}"  # USER's, as seeded above
            r = redis.Redis.from_url(redis_url(settings))
            engine = create_engine(db_url(settings))
            values = {
                "mirror": mirror,
                "mirror_dir": str(www),
                "versions": str(files),
                "bin": str(host.bin),
                "ro": str(read_only_dir),
                "tmp": str(base),
                "project": settings.project,
                "scratch": scratch,
                "busy": str(busy.getsockname()[1]),
                "redis_port": str(settings.redis_port),
                "db_port": str(settings.db_port),
                "free1": str(free_port()),
                "free2": str(free_port()),
                "mark": MARK,
                **{f"c_{k}": v for k, v in made.items()},
            }
            try:
                watched = (base, read_only_dir)
                yield Bench(settings, env, values, docker_client, r, engine, api, watched, (settings.project, scratch))
            finally:
                r.close()
                engine.dispose()
    finally:
        busy.close()
        for c in docker_client.containers.list(all=True, filters={"label": f"{FAULT_LABEL}={run_id}"}):
            c.remove(force=True)
        remove_by_label(docker_client, scratch)  # in case a refusal failed to stop compose


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Http:
    """A request to the stack's API. `body` changes a valid preview request; `content` is sent raw."""

    method: str
    path: str
    body: Callable[[dict[str, Any]], None] | None = None
    content: Callable[[], bytes | Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


@dataclass(frozen=True)
class Case:
    id: str
    run: tuple[str, ...] | Http  # `invoke` arguments, or an API request
    words: tuple[str, ...]  # each must appear in the answer ({placeholders} from Bench.vars)
    code: int = 1  # the exit code, or the HTTP status
    env: dict[str, str] = field(default_factory=dict)


def blender(*args: str) -> tuple[str, ...]:
    return ("blender", *args)


def mirrored(version: str, *args: str) -> tuple[str, ...]:
    return blender("--version", version, "--source", "mirror", "--mirror", "{mirror}", *args)


def versions_file(name: str) -> tuple[str, ...]:
    return blender("--version", INSTALLED, "--source", "installed", "--versions-file", "{versions}/" + name + ".yaml")


def linked(path: str) -> tuple[str, ...]:
    return blender("--version", INSTALLED, "--source", "installed", "--link", path)


def api_container(name: str) -> tuple[str, ...]:
    return blender("--source", "installed", "--api-container", name)


def valid_request() -> dict[str, Any]:
    scene = json.loads(example_scene_path().read_text())
    scene["objects"] = scene["objects"][:3]
    return {"user": USER, "quality": "preview", "scene": scene}


def post(change: Callable[[dict[str, Any]], None]) -> Http:
    return Http("POST", "/renders", body=change)


def raw(content: Callable[[], bytes | Iterator[bytes]], **headers: str) -> Http:
    return Http("POST", "/renders", content=content, headers=headers or {"content-type": "application/json"})


def oversized() -> bytes:
    body = json.dumps(valid_request())
    return (body[:-1] + " " * 1_100_000 + "}").encode()  # valid JSON, valid request: only too big


def oversized_chunks() -> Iterator[bytes]:
    data = oversized()
    for i in range(0, len(data), 64 * 1024):  # no Content-Length: chunked transfer encoding
        yield data[i : i + 64 * 1024]


def set_in(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set one value in the request, by a dotted path (list items by index): e.g. scene.camera.lens."""

    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


SHA_HINT = "check the mirror"
JSON = {"content-type": "application/json"}
NO_TOKEN = {**JSON, "Authorization": ""}  # overrides the client's token: sends none
BAD_TOKEN = {**JSON, "Authorization": "Bearer not-a-token-anyone-has"}
CASES = [
    # --- the versions file
    Case("versions-malformed-yaml", versions_file("malformed"), ("malformed.yaml", "not valid YAML", "line")),
    Case("versions-missing-sha256", versions_file("nosha"), ("nosha.yaml", "sha256: missing (required)")),
    Case("versions-unknown-platform", versions_file("platform"), ("platform.yaml", "unknown platform 'linux-arm64'")),
    Case("versions-duplicate-version", versions_file("duplicate"), ("duplicate.yaml", "duplicate key '3.3.21'")),
    Case("versions-bad-sha256", versions_file("badsha"), ("badsha.yaml", "'not-a-sha' is not a sha256")),
    Case("versions-unquoted-version", versions_file("unquoted"), ("unquoted.yaml", "is not X.Y.Z", "quoted")),
    Case("versions-newer-format", versions_file("format"), ("format.yaml", "format", "2")),
    Case(
        "versions-file-missing",
        versions_file("absent"),
        ("absent.yaml", "cannot read the Blender versions file", "--versions-file"),
    ),
    # --- the api container
    Case(
        "api-container-absent",
        api_container("rdfault-absent"),
        ("no container named 'rdfault-absent'", "invoke services", "--api-container"),
    ),
    Case(
        "api-container-no-stack",
        blender("--source", "installed"),
        ("no api container in compose project '{scratch}'", "invoke services"),
        env={"RENDERDEV_PROJECT": "{scratch}"},
    ),
    Case(
        "api-container-stopped",
        api_container("{c_stopped}"),
        ("api container {c_stopped} is not running", "exited", "invoke services"),
    ),
    Case(
        "api-container-no-version",
        api_container("{c_noversion}"),
        ("{c_noversion} declares no Blender version", "BLENDER_VERSION", "--version X.Y.Z"),
    ),
    Case(
        "api-container-unknown-version",
        api_container("{c_unknown}"),
        ("Blender 9.9.9 is not in", "good.yaml", "known versions", INSTALLED),
    ),
    Case(
        "api-container-malformed-version",
        api_container("{c_malformed}"),
        ("{c_malformed} declares Blender 'latest'", "org.blender.version", "not X.Y.Z"),
    ),
    # --- downloads (loopback HTTP mirror, or the same folder as a local mirror)
    Case("download-404", mirrored("7.1.0"), ("blender-7.1.0-linux-x64.tar.xz", "HTTP 404", "--mirror")),
    Case("download-truncated", mirrored("7.1.1"), ("cannot extract blender-7.1.1-linux-x64.tar.xz", "damaged")),
    Case("download-checksum-mismatch", mirrored("7.1.2"), ("sha256 mismatch", "blender-7.1.2-linux-x64.tar.xz")),
    Case("download-tar-slip", mirrored("7.1.3"), ("refusing blender-7.1.3-linux-x64.tar.xz", "'..'", "tar slip")),
    Case("download-absolute-path", mirrored("7.1.4"), (f"/tmp/{MARK}-abs", "is an absolute path", "tar slip")),
    Case("download-symlink-escapes", mirrored("7.1.5"), ("symlink pointing outside", "../../../../etc")),
    Case("download-device-node", mirrored("7.1.6"), ("blender-7.1.6-linux-x64/null", "device node")),
    Case("download-hard-link-escapes", mirrored("7.1.7"), ("hard link pointing outside", "../etc/passwd")),
    Case("download-no-binary", mirrored("7.1.8"), ("has no blender-7.1.8-linux-x64/blender", "not a Blender release")),
    Case("download-wrong-binary", mirrored("7.1.9"), ("reports 'Blender 7.0.0'", "expected Blender 7.1.9")),
    Case("download-no-sha256", mirrored("7.2.0"), ("no sha256 for 7.2.0", "refusing", "--insecure")),
    Case(
        "mirror-folder-tar-slip",
        blender("--version", "7.1.3", "--source", "mirror", "--mirror", "{mirror_dir}"),
        ("refusing blender-7.1.3-linux-x64.tar.xz", "'..'"),
    ),
    Case(
        "mirror-folder-lacks-file",
        blender("--version", "7.1.0", "--source", "mirror", "--mirror", "{mirror_dir}"),
        ("mirror folder {mirror_dir} has no release/Blender7.1/blender-7.1.0-linux-x64.tar.xz",),
    ),
    Case(
        "mirror-neither-url-nor-folder",
        blender("--version", "7.1.2", "--source", "mirror", "--mirror", "{tmp}/no-such-mirror"),
        ("{tmp}/no-such-mirror is neither an http(s) URL nor an existing folder", "--mirror"),
    ),
    # --- the link
    Case("link-foreign-file", linked("{bin}/file"), ("{bin}/file is a regular file", "left alone", "--force")),
    Case(
        "link-dangling-foreign-link",
        linked("{bin}/dangling"),
        ("{bin}/dangling is a link to /nonexistent-{mark}/blender", "not a link renderdev made", "--force"),
    ),
    Case("link-foreign-link", linked("{bin}/foreign"), ("{bin}/foreign is a link to /bin/true", "--force")),
    Case("link-is-a-folder", linked("{bin}/folder"), ("{bin}/folder is a folder", "--link PATH")),
    Case("link-read-only-folder", linked("{ro}/blender"), ("no write access to {ro}", "sudo ln -sfn")),
    # --- configuration
    Case(
        "config-port-out-of-range",
        ("services",),
        ("api_port='70000'", "RENDERDEV_API_PORT", "65535"),
        env={"RENDERDEV_API_PORT": "70000"},
    ),
    Case(
        "config-port-not-a-number",
        ("services",),
        ("redis_port='abc'", "RENDERDEV_REDIS_PORT"),
        env={"RENDERDEV_REDIS_PORT": "abc"},
    ),
    Case(
        "config-bad-project-name",
        ("services",),
        ("project='Bad Name'", "RENDERDEV_PROJECT"),
        env={"RENDERDEV_PROJECT": "Bad Name"},
    ),
    Case(
        "config-source-from-env",
        ("blender",),
        ("blender_source='ftp'", "RENDERDEV_BLENDER_SOURCE", "'mirror'"),
        env={"RENDERDEV_BLENDER_SOURCE": "ftp"},
    ),
    Case(
        "config-project-file-not-toml",
        ("services",),
        ("cannot read renderdev settings from {versions}/malformed.yaml",),
        env={"RENDERDEV_CONFIG": "{versions}/malformed.yaml"},
    ),
    Case(
        "port-in-use-new-stack",
        ("services",),
        ("port {busy} on 127.0.0.1", "api_port", "already in use", "RENDERDEV_API_PORT="),
        env={
            "RENDERDEV_PROJECT": "{scratch}",
            "RENDERDEV_API_PORT": "{busy}",
            "RENDERDEV_REDIS_PORT": "{free1}",
            "RENDERDEV_DB_PORT": "{free2}",
        },
    ),
    Case(
        "port-in-use-by-another-stack",
        ("services",),
        ("port {redis_port} on 127.0.0.1", "in use by container {project}-redis-1", "RENDERDEV_API_PORT="),
        env={
            "RENDERDEV_PROJECT": "{scratch}",
            "RENDERDEV_API_PORT": "{redis_port}",
            "RENDERDEV_REDIS_PORT": "{free1}",
            "RENDERDEV_DB_PORT": "{free2}",
        },
    ),
    Case(
        "port-in-use-running-stack-moved",
        ("services",),
        ("port {busy} on 127.0.0.1", "already in use", "RENDERDEV_DB_PORT="),
        env={"RENDERDEV_DB_PORT": "{busy}"},
    ),
    Case(
        "ports-the-same-twice",
        ("services",),
        ("api_port and redis_port are both {free1}", "own host port"),
        env={
            "RENDERDEV_PROJECT": "{scratch}",
            "RENDERDEV_API_PORT": "{free1}",
            "RENDERDEV_REDIS_PORT": "{free1}",
            "RENDERDEV_DB_PORT": "{free2}",
        },
    ),
    # --- CLI arguments
    Case("cli-unknown-queue", ("worker", "--queues", "xq"), ("unknown queue(s): xq", "--queues pq")),
    Case("cli-unknown-source", blender("--source", "ftp"), ("blender_source='ftp'", "'auto'", "option")),
    Case("cli-version-not-xyz", blender("--version", "3.4"), ("'3.4' is not a Blender version", "X.Y.Z")),
    Case("cli-version-unknown", blender("--version", "9.9.9"), ("Blender 9.9.9 is not in", "--version V")),
    *[
        Case(
            f"cli-amount-{label}",
            ("seed-credits", "--user", USER, "--amount", amount),
            ("credits must be", amount, "invoke seed-credits"),
        )
        for label, amount in [
            ("negative", "-5"),
            ("zero", "0"),
            ("fraction", "2.5"),
            ("words", "ten"),
            ("too-many", "1000001"),
        ]
    ],
    Case(
        "cli-seed-not-an-email",
        ("seed-credits", "--user", "not-an-email", "--amount", "5"),
        ("not an email address: 'not-an-email'", "invoke seed-credits"),
    ),
    Case(
        "cli-render-unknown-quality",
        ("render", "--quality", "ultra", "--user", USER, "--timeout", "5"),
        ("refused the render (422)", "quality", "'preview' or 'hd'"),
    ),
    Case(
        "cli-render-hd-too-few-credits",
        ("render", "--quality", "hd", "--user", USER, "--timeout", "5"),
        ("refused the render (402)", "has 5", "price is 10", "invoke seed-credits --user " + USER),
    ),
    Case(
        "cli-render-scene-file-missing",
        ("render", "--scene", "{tmp}/no-scene.json", "--timeout", "5"),
        ("cannot read scene file {tmp}/no-scene.json",),
    ),
    # --- API payloads
    Case("api-lens-too-short", post(set_in("scene.camera.lens", 1)), ("lens", "greater than or equal to 8"), 422),
    Case("api-negative-size", post(set_in("scene.objects.0.size", [-1, 1, 1])), ("size", "-1"), 422),
    Case("api-colour-not-hex", post(set_in("scene.objects.0.colour", "red")), ("colour", "red"), 422),
    Case("api-roughness-over-one", post(set_in("scene.objects.0.roughness", 2)), ("roughness", "less than"), 422),
    Case("api-string-for-number", post(set_in("scene.room.width", "6")), ("width", "valid number"), 422),
    Case("api-nan", post(set_in("scene.lights.0.energy", float("nan"))), ("energy", "finite number"), 422),
    Case("api-wall-twice", post(set_in("scene.room.walls", ["back", "back"])), ("walls", "once"), 422),
    Case("api-scene-version-2", post(set_in("scene.version", 2)), ("version", "2"), 422),
    Case(
        "api-too-many-objects",
        post(lambda b: b["scene"].update(objects=b["scene"]["objects"][:1] * 201)),
        ("objects", "at most 200"),
        422,
    ),
    Case("api-unknown-field", post(set_in("scene.owner", "x")), ("owner", "Extra inputs"), 422),
    Case("api-unknown-quality", post(set_in("quality", "ultra")), ("quality", "ultra", "'preview' or 'hd'"), 422),
    Case("api-quality-missing", post(lambda b: b.pop("quality")), ("quality", "Field required"), 422),
    Case("api-not-json", raw(lambda: b"{not json"), ("JSON decode error",), 422),
    Case("api-json-array", raw(lambda: b"[1, 2]"), ("body", "valid dictionary"), 422),
    Case("api-oversized", raw(oversized), ("request body too large", "1000000 bytes"), 413),
    Case("api-oversized-chunked", raw(oversized_chunks), ("request body too large", "1000000 bytes"), 413),
    Case("api-another-user", post(set_in("user", "nobody@example.com")), (USER, "nobody@example.com"), 403),
    Case(
        "api-no-token",
        Http("POST", "/renders", body=set_in("quality", "preview"), headers=NO_TOKEN),
        ("missing API token", "Authorization: Bearer", "invoke seed-credits"),
        401,
    ),
    Case(
        "api-unknown-token",
        Http("POST", "/renders", body=set_in("quality", "hd"), headers=BAD_TOKEN),
        ("unknown API token", "invoke seed-credits", "--rotate-token"),
        401,
    ),
    Case("api-no-token-job", Http("GET", "/renders/" + "0" * 32, headers=NO_TOKEN), ("missing API token",), 401),
    Case("api-another-users-credits", Http("GET", "/users/nobody@example.com/credits"), (USER, "nobody"), 403),
    Case("api-job-key-suffix", Http("GET", "/renders/" + "0" * 32 + ":scene"), ("no such job",), 404),
    Case("api-hd-too-few-credits", post(set_in("quality", "hd")), ("has 5", "price is 10", "seed-credits"), 402),
    Case("api-unknown-job", Http("GET", "/renders/no-such-mjid"), ("no such job: no-such-mjid",), 404),
]


def _answer(bench: Bench, case: Case) -> tuple[int, str]:
    fill = bench.vars
    if isinstance(case.run, Http):
        req = case.run
        if req.body is not None:
            body = valid_request()
            req.body(body)
            content: Any = json.dumps(body).encode()
        else:
            content = req.content() if req.content is not None else None
        resp = bench.api.request(req.method, req.path, content=content, headers=req.headers)
        return resp.status_code, resp.text
    env = {**bench.env, **{k: v.format(**fill) for k, v in case.env.items()}}
    done = run_invoke(env, *(a.format(**fill) for a in case.run), timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_there_are_at_least_30_cases() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(bench: Bench, case: Case) -> None:
    before = bench.snapshot()
    code, said = _answer(bench, case)
    after = bench.snapshot()
    assert code == case.code, f"{case.id}: expected {case.code}, got {code}:\n{said}"
    assert "Traceback" not in said, said
    missing = [w for w in (w.format(**bench.vars) for w in case.words) if w not in said]
    assert not missing, f"{case.id}: the answer lacks {missing}:\n{said}"
    assert after == before, f"{case.id} changed something"
