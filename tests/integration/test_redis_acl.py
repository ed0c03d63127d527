"""Worker users in the project's redis image (compose/redis, provisioner/redis_acl.py): a worker's credential runs a
real rq worker on pq and sq and cannot touch the JobManager's ledger; the manager's password comes from the secret
at every start; grants, re-grants and revocations take effect at once and survive a restart. One container for the
module, started by testcontainers from the image (no compose)."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from docker import DockerClient
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq.command import send_shutdown_command
from rq.job import Job, JobStatus
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from provisioner.config import Settings, load_settings
from provisioner.console import make_console
from provisioner.images import ensure_images
from provisioner.redis_acl import (
    WORKER_USER_PREFIX,
    grant_worker,
    revoke_worker,
    worker_rules,
    worker_user,
    worker_users,
)
from renderfarm.keys import heartbeat_key, mq_key, scene_key
from tests.stackutil import wait_for

pytestmark = pytest.mark.integration

SECRET = "/tmp/redis_password"  # where the container's REDIS_PASSWORD_FILE points
ACL_FILE = "/data/users.acl"
WAIT = 30.0  # seconds: deadline of each wait for a worker, a job or Redis

# A real rq worker in a process of its own, as the worker user: argv = class (worker, or heroku: rq's HerokuWorker
# as the render worker sets it up), queues, name, burst|serve. Where and who from the environment (the password is
# not put on a command line).
RUNNER = """
import os, sys
from redis import Redis
from rq import Queue, Worker
from rq.worker import HerokuWorker


class Heroku(HerokuWorker):
    imminent_shutdown_delay = 0  # as the render worker: SIGTERM stops the job in hand at once


kind, queues, name, mode = sys.argv[1:5]
conn = Redis(host=os.environ["ACL_HOST"], port=int(os.environ["ACL_PORT"]), username=os.environ["ACL_USER"],
             password=os.environ["ACL_PASSWORD"])
cls = {"worker": Worker, "heroku": Heroku}[kind]
worker = cls([Queue(q, connection=conn) for q in queues.split(",")], connection=conn, name=name)
worker.work(burst=mode == "burst", with_scheduler=False)
"""


@dataclass
class Server:
    """The project's redis container; `password` is the manager's as its secret says now."""

    container: DockerContainer
    password: str

    def address(self) -> tuple[str, int]:
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()  # a restart may publish the port elsewhere
        return self.container.get_container_host_ip(), int(wrapped.ports["6379/tcp"][0]["HostPort"])

    def connect(self, *, username: str | None = None, password: str | None = None, retry: bool = True) -> redis.Redis:
        """A client that, with `retry`, connects again once when the server hangs up (at once, no backoff), and
        otherwise keeps its one connection and raises what happens to it."""
        host, port = self.address()
        options: dict[str, Any] = (
            {"retry": Retry(NoBackoff(), 1)}
            if retry
            else {"retry": Retry(NoBackoff(), 0), "single_connection_client": True}
        )
        return redis.Redis(host=host, port=port, username=username, password=password, socket_timeout=10, **options)

    def manager(self) -> redis.Redis:
        return self.connect(password=self.password)

    def as_worker(self, name: str, password: str, *, retry: bool = True) -> redis.Redis:
        return self.connect(username=worker_user(name), password=password, retry=retry)

    def run(self, *argv: str) -> str:
        done = self.container.exec(list(argv))
        assert done.exit_code == 0, f"{argv} exited {done.exit_code}: {done.output!r}"
        return bytes(done.output).decode()


def secret_archive(password: str) -> bytes:
    """A tar of the secret file, to put into the container as docker cp does."""
    data = password.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(Path(SECRET).name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def redis_image(docker_client: DockerClient) -> Settings:
    """The project's redis image (only it: the rest of the stack is not needed here), built if missing or stale."""
    settings = load_settings()
    ensure_images(docker_client, settings, make_console(), only=("redis",))
    return settings


@pytest.fixture(scope="module")
def server(redis_image: Settings) -> Iterator[Server]:
    password = secrets.token_urlsafe(16)
    container = (
        DockerContainer(redis_image.image("redis"))
        .with_exposed_ports(6379)
        .with_env("REDIS_PASSWORD_FILE", SECRET)
        .with_copy_into_container(password.encode(), SECRET, 0o644)
        .waiting_for(LogMessageWaitStrategy("Ready to accept connections"))
    )
    with container:
        yield Server(container, password)


def rules_of(manager: redis.Redis, user: str) -> dict[str, Any]:
    """ACL GETUSER of `user`, its lists sorted (Redis lists a user's commands in no fixed order)."""
    found = manager.acl_getuser(user)
    assert found is not None, f"no Redis user {user}"
    return {k: sorted(v) if isinstance(v, list) else v for k, v in found.items()}


def new_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def refused(connect: Callable[[], redis.Redis]) -> bool:
    """Whether Redis refuses the credentials `connect` uses (at the connection's HELLO or AUTH)."""
    try:
        connect().ping()
    except redis.exceptions.AuthenticationError:
        return True
    return False


# ---------------------------------------------------------------- a real rq worker


def start_worker(server: Server, tmp_path: Path, user: str, password: str, *argv: str) -> subprocess.Popen[bytes]:
    host, port = server.address()
    env = {**os.environ, "ACL_HOST": host, "ACL_PORT": str(port), "ACL_USER": user, "ACL_PASSWORD": password}
    with (tmp_path / f"{argv[2]}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, *argv], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen[bytes], tmp_path: Path, name: str) -> None:
    """Wait for the worker process to end; it must exit 0 (its log in the failure otherwise)."""
    try:
        code = proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    assert code == 0, f"worker {name} exited {code}:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"


def status(job: Job) -> JobStatus:
    return job.get_status(refresh=True)


def test_a_worker_user_runs_a_real_rq_worker_on_pq_and_sq(server: Server, tmp_path: Path) -> None:
    name, password = new_name(), secrets.token_urlsafe(16)
    manager = server.manager()
    grant_worker(manager, name, password)
    user = worker_user(name)
    manager.acl_log_reset()
    pq, sq = Queue("pq", connection=manager), Queue("sq", connection=manager)

    # Burst: jobs on both queues, one that fails (rq's failure path runs as the worker too).
    done = [pq.enqueue("operator.add", 2, 3), sq.enqueue("operator.add", 4, 5)]
    failing = sq.enqueue("operator.truediv", 1, 0)
    finish(
        start_worker(server, tmp_path, user, password, "worker", "pq,sq", f"{name}-burst", "burst"),
        tmp_path,
        f"{name}-burst",
    )
    assert [status(j) for j in done] == [JobStatus.FINISHED, JobStatus.FINISHED]
    assert [j.return_value() for j in done] == [5, 9]
    assert status(failing) == JobStatus.FAILED

    # A worker that serves until told to stop over rq's pubsub (send_shutdown_command): it finishes the job in hand.
    serving = f"{name}-serve"
    proc = start_worker(server, tmp_path, user, password, "worker", "pq", serving, "serve")
    wait_for(lambda: manager.exists(f"rq:worker:{serving}"), WAIT, f"worker {serving} to register")
    busy = pq.enqueue("time.sleep", 1)
    wait_for(lambda: status(busy) == JobStatus.STARTED, WAIT, f"job {busy.id} to start on {serving}")
    send_shutdown_command(manager, serving)
    finish(proc, tmp_path, serving)
    assert status(busy) == JobStatus.FINISHED

    # rq's HerokuWorker (the render worker's base), serving both queues, stopped by SIGTERM while busy: it takes a
    # job off sq, then stops its work horse (the job fails, in Redis, as this user) and exits.
    heroku = f"{name}-heroku"
    proc = start_worker(server, tmp_path, user, password, "heroku", "pq,sq", heroku, "serve")
    quick = sq.enqueue("operator.add", 1, 1)
    wait_for(lambda: status(quick) == JobStatus.FINISHED, WAIT, f"job {quick.id} to finish on {heroku}")
    long = pq.enqueue("time.sleep", 30)
    wait_for(lambda: status(long) == JobStatus.STARTED, WAIT, f"job {long.id} to start on {heroku}")
    proc.send_signal(signal.SIGTERM)
    finish(proc, tmp_path, heroku)
    assert status(long) == JobStatus.FAILED

    # No command rq sent was refused, not even one whose refusal rq would have swallowed (CLIENT SETNAME, INFO).
    assert [e for e in manager.acl_log() if e.get("username") == user] == []
    assert manager.hget(f"rq:worker:{heroku}", "ip_address") not in (None, b"unknown")


def test_a_worker_user_cannot_touch_the_ledger(server: Server) -> None:
    name, password = new_name(), secrets.token_urlsafe(16)
    manager = server.manager()
    grant_worker(manager, name, password)
    mjid = uuid.uuid4().hex
    manager.hset(mq_key(mjid), mapping={"state": "running", "owner": "someone@example.com"})
    manager.set(scene_key(mjid), '{"objects": []}')
    manager.set(heartbeat_key(mjid), "w1", ex=60)
    ledger = manager.hgetall(mq_key(mjid))
    worker = server.as_worker(name, password)

    refused_calls = {
        "HSET the job's hash": lambda: worker.hset(mq_key(mjid), "state", "finished"),
        "GET its scene": lambda: worker.get(scene_key(mjid)),
        "SET its heartbeat": lambda: worker.set(heartbeat_key(mjid), "w2"),
        "KEYS *": lambda: worker.keys("*"),
        "FLUSHALL": lambda: worker.flushall(),
        "CONFIG GET": lambda: worker.config_get("*"),
        "ACL LIST": lambda: worker.acl_list(),
    }
    for what, call in refused_calls.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
            pytest.fail(f"the worker user could {what}")
    # Nor listen to the ledger's change notifications.
    pubsub = worker.pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        pubsub.subscribe(f"__keyspace@0__:{mq_key(mjid)}")
        pubsub.get_message(timeout=5)
    pubsub.close()

    assert manager.hgetall(mq_key(mjid)) == ledger
    assert manager.get(scene_key(mjid)) == b'{"objects": []}'
    assert manager.get(heartbeat_key(mjid)) == b"w1"

    # What else the user may run, as Redis itself judges it (ACL DRYRUN): rq's keys, not the rest of the server.
    def allowed(*command: str) -> bool:
        return bool(manager.execute_command("ACL", "DRYRUN", worker_user(name), *command) == b"OK")

    assert allowed("BLMOVE", "rq:queue:pq", "rq:queue:pq:intermediate", "LEFT", "RIGHT", "1")
    assert allowed("INFO", "server")  # the one @dangerous command rq needs (the server's version)
    for command in (
        ["INFO"],
        ["INFO", "keyspace"],
        ["SCAN", "0"],
        ["FLUSHDB"],
        ["EVAL", "return 1", "0"],
        ["PUBLISH", "rq:pubsub:other", "{}"],
        ["CLIENT", "KILL", "ID", "1"],
        ["CLIENT", "LIST"],
        ["MONITOR"],
        ["SHUTDOWN"],
        ["DEBUG", "SLEEP", "0"],
        ["ACL", "SETUSER", "x"],
        ["GET", "renderfarm:anything"],
    ):
        assert not allowed(*command), command


def test_the_manager_password_comes_from_the_secret_and_is_needed(server: Server) -> None:
    manager = server.manager()
    assert manager.acl_whoami() == "default"
    assert refused(lambda: server.connect(retry=False))  # no password: refused at HELLO
    assert refused(lambda: server.connect(username="default", password="not-" + server.password, retry=False))

    lines = server.run("cat", ACL_FILE).splitlines()
    digest = hashlib.sha256(server.password.encode()).hexdigest()
    assert [line for line in lines if line.startswith("user default ")] == [f"user default on #{digest} ~* &* +@all"]
    assert server.run("stat", "-c", "%a %U", ACL_FILE).split() == ["600", "redis"]
    # The clear password is nowhere but in the secret: not in the ACL file, redis.conf or redis-server's argv.
    for path in (ACL_FILE, "/run/redis/redis.conf", "/proc/1/cmdline"):
        assert server.password not in server.run("cat", path), path


def test_grant_is_idempotent_and_a_regrant_replaces_the_password(server: Server) -> None:
    name, first, second = new_name(), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    manager = server.manager()
    grant_worker(manager, name, first)
    granted = rules_of(manager, worker_user(name))
    grant_worker(manager, name, first)
    assert rules_of(manager, worker_user(name)) == granted
    assert name in worker_users(manager)
    assert server.as_worker(name, first).ping() is True
    saved = [line for line in server.run("cat", ACL_FILE).splitlines() if line.startswith(f"user {worker_user(name)} ")]
    assert len(saved) == 1 and "~rq:*" in saved[0] and "&rq:*" in saved[0]  # ACL SAVE wrote it

    grant_worker(manager, name, second)
    assert refused(lambda: server.as_worker(name, first, retry=False))
    assert server.as_worker(name, second).ping() is True
    assert worker_users(manager).count(name) == 1
    rules = rules_of(manager, worker_user(name))
    assert rules["keys"] == ["~rq:*"] and rules["channels"] == ["&rq:*"]
    assert worker_rules()[:2] == ["~rq:*", "&rq:*"]


def test_revoke_refuses_a_connected_worker_at_once(server: Server) -> None:
    name, password = new_name(), secrets.token_urlsafe(16)
    manager = server.manager()
    grant_worker(manager, name, password)
    connected = server.as_worker(name, password, retry=False)
    reconnecting = server.as_worker(name, password)  # connects again when the server hangs up
    assert connected.ping() is True and reconnecting.ping() is True

    assert revoke_worker(manager, name) is True
    with pytest.raises(redis.exceptions.ConnectionError):  # closed by Redis at the DELUSER
        connected.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):  # its reconnect's AUTH fails
        reconnecting.ping()
    assert refused(lambda: server.as_worker(name, password, retry=False))
    assert name not in worker_users(manager)
    assert f"user {worker_user(name)} " not in server.run("cat", ACL_FILE)
    assert revoke_worker(manager, name) is False


def test_worker_users_survive_a_restart_and_the_manager_password_is_rewritten(server: Server) -> None:
    name, password = new_name(), secrets.token_urlsafe(16)
    manager = server.manager()
    grant_worker(manager, name, password)
    granted = rules_of(manager, worker_user(name))
    manager.close()

    old, new = server.password, secrets.token_urlsafe(16)
    wrapped = server.container.get_wrapped_container()
    wrapped.stop(timeout=10)
    assert wrapped.put_archive(str(Path(SECRET).parent), secret_archive(new))  # the secret changed while it was down
    wrapped.start()
    server.password = new

    def answers() -> bool:
        try:
            return bool(server.manager().ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_for(answers, WAIT, "redis to answer with the new manager password after the restart")
    assert refused(lambda: server.connect(password=old, retry=False))
    manager = server.manager()
    assert rules_of(manager, worker_user(name)) == granted
    assert name in worker_users(manager)
    assert server.as_worker(name, password).blpop(["rq:queue:nothing"], timeout=1) is None

    lines = server.run("cat", ACL_FILE).splitlines()
    digest = hashlib.sha256(new.encode()).hexdigest()
    assert lines[0] == f"user default on #{digest} ~* &* +@all"
    assert sum(line.startswith("user default ") for line in lines) == 1
    assert all(line.startswith("user ") for line in lines)
    assert any(line.startswith(f"user {WORKER_USER_PREFIX}{name} ") for line in lines)
    assert server.run("stat", "-c", "%a %U", ACL_FILE).split() == ["600", "redis"]
