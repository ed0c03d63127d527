"""Redis users for render workers: a worker's credential runs an rq worker and cannot touch the JobManager's ledger.

The host side, connected as the manager (Redis's `default` user, whose password is the stack's redis_password secret;
compose/redis/entrypoint.sh writes it into /data/users.acl at every start). Each worker user is `worker-<name>`:
keys `~rq:*` and channels `&rq:*` only, and only the commands an rq worker sends (WORKER_COMMANDS). Grants and
revocations are saved with ACL SAVE into that file, in Redis's data volume, so they survive restarts.

What Redis 7.0 (Debian 12's) does, as measured here:
- ACL DELUSER closes every connection authenticated as the user at once (one blocked in BLPOP too), and a new AUTH
  fails: a revoked worker is refused at its next command; no CLIENT KILL is needed.
- ACL SETUSER on an existing user (a re-grant) keeps its open connections: they run on under the new rules, and the
  old password is refused from the next AUTH on. A re-grant therefore never interrupts a working worker; revoke to
  cut one off.
"""

from __future__ import annotations

import hashlib
import re

from redis import Redis
from redis.exceptions import RedisError

from provisioner.errors import ConfigError, RenderdevError

WORKER_USER_PREFIX = "worker-"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")

WORKER_KEYS = ("~rq:*",)  # rq's keys; the JobManager's are under renderfarm: and out of reach
WORKER_CHANNELS = ("rq:*",)  # rq:pubsub:<worker>, the commands rq's send_*_command publishes to a worker
WORKER_CATEGORIES = (
    "-@all",  # nothing but what follows
    "+@transaction",  # MULTI, EXEC, DISCARD, WATCH, UNWATCH: rq's pipelines
)
# The commands rq 3.0 (redis-py 8) sends from a worker, found by running real rq workers as a user with `+@all` on
# ~rq:* and watching them with MONITOR: Worker, HerokuWorker and SimpleWorker; burst; SIGTERM while idle and while
# busy; the shutdown, kill-horse and stop-job commands; failing, retried, timed-out and dependent jobs; a job
# abandoned by a SIGKILLed worker and a job stuck in an intermediate queue, both cleaned up by a later worker; a name
# reused after a SIGKILL. The same runs then passed with these rules alone (nothing in ACL LOG). AUTH and HELLO need
# no rule: Redis lets every user run them.
WORKER_COMMANDS = (
    # Connection.
    "+ping",  # redis-py's health checks, and a worker's check that Redis answers before it starts
    "+select",  # redis-py selects RENDERFARM_REDIS_DB when it is not 0 (the keys are ~rq:* in every database)
    "+client|setname",  # rq names its connection after the worker (so CLIENT LIST shows which worker it is)
    "+client|info",  # and reads its own address back for its worker hash (without either: a warning, "unknown")
    # The one @dangerous command, and only `INFO server`: rq.utils.get_version reads redis_version from it. Without
    # it rq assumes Redis 5.0.9, and a one-queue worker (pq only) takes jobs with BLPOP instead of BLMOVE into the
    # queue's intermediate list, losing rq's recovery of a job taken by a worker that died at that moment. (A
    # first-argument rule, which Redis 7.0 accepts though it calls it deprecated; it checks the first section only.)
    "+info|server",
    # Pubsub: the worker listens on its own channel; it publishes nothing.
    "+subscribe",
    "+unsubscribe",
    # Keys, all under ~rq:* only.
    "+del",
    "+exists",
    "+expire",
    "+persist",
    "+get",  # an intermediate queue's first-seen marks
    "+set",  # those marks, and the maintenance locks (SET NX EX)
    "+hset",  # job and worker hashes
    "+hget",
    "+hgetall",
    "+hexists",  # a worker's birth checks that a worker of its name is dead
    "+hincrby",
    "+hincrbyfloat",
    "+lpop",  # the queues and their intermediate lists
    "+blpop",
    "+lmove",
    "+blmove",
    "+rpush",
    "+lrange",
    "+lrem",
    "+sadd",  # worker registrations, a job's dependents, a worker's executions
    "+srem",
    "+smembers",
    "+zadd",  # the registries (started, finished, failed, deferred...)
    "+zrem",
    "+zscore",
    "+zrange",
    "+zrangebyscore",
    "+zremrangebyscore",
    "+xadd",  # a job's results (the stream rq:results:<id>)
)


class RedisAclError(RenderdevError):
    """A worker's Redis user could not be granted, revoked or listed."""


def worker_user(name: str) -> str:
    """The Redis user of the worker `name`: `worker-<name>`. ConfigError unless `name` is 1 to 40 lowercase letters,
    digits and '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"not a worker name: {name!r} (1 to 40 lowercase letters, digits and '-', not starting with '-')",
            hint="name the worker e.g. gpu-01",
        )
    return WORKER_USER_PREFIX + name


def worker_rules() -> list[str]:
    """A worker user's ACL rules, as ACL SETUSER takes them, in the order they apply."""
    return [*WORKER_KEYS, *(f"&{c}" for c in WORKER_CHANNELS), *WORKER_CATEGORIES, *WORKER_COMMANDS]


def grant_worker(redis: Redis, name: str, password: str) -> None:
    """Make (or remake) the worker's Redis user with `password` and worker_rules(), and save the users to the ACL
    file. Starts from `reset`: a re-grant replaces the rules and the password (the old one is refused from then on),
    and granting the same twice changes nothing. Connections already open stay open."""
    user = worker_user(name)
    if not password:
        raise ConfigError(f"empty password for the Redis user {user}", hint="give the worker a generated password")
    digest = hashlib.sha256(password.encode()).hexdigest()  # Redis stores only this; the clear one is never sent
    try:
        redis.acl_setuser(
            user,
            reset=True,
            enabled=True,
            hashed_passwords=[f"+{digest}"],
            categories=list(WORKER_CATEGORIES),
            commands=list(WORKER_COMMANDS),
            keys=list(WORKER_KEYS),
            channels=list(WORKER_CHANNELS),
        )
        redis.acl_save()
    except RedisError as exc:
        raise RedisAclError(f"cannot grant the Redis user {user}: {exc}", hint=_SAVE_HINT) from exc


def revoke_worker(redis: Redis, name: str) -> bool:
    """Delete the worker's Redis user and save the users to the ACL file; True if it existed. Redis (7.0) closes
    the user's open connections at once: the worker is refused at its next command."""
    user = worker_user(name)
    try:
        deleted = int(redis.acl_deluser(user))
        redis.acl_save()
    except RedisError as exc:
        raise RedisAclError(f"cannot revoke the Redis user {user}: {exc}", hint=_SAVE_HINT) from exc
    return deleted > 0


def worker_users(redis: Redis) -> list[str]:
    """The names of the workers that have a Redis user (what grant_worker was given), sorted."""
    try:
        users = redis.acl_users()
    except RedisError as exc:
        raise RedisAclError(f"cannot list Redis's users: {exc}", hint=_SAVE_HINT) from exc
    names = (u.decode() if isinstance(u, bytes) else str(u) for u in users)
    return sorted(n.removeprefix(WORKER_USER_PREFIX) for n in names if n.startswith(WORKER_USER_PREFIX))


_SAVE_HINT = (
    "connect as the manager (the default user, with the stack's redis_password) to the project's redis image, which"
    " keeps its users in /data/users.acl; if the image is older, rebuild it: invoke images, then invoke services"
)
