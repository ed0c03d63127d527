#!/bin/sh
# Start redis-server with a password read from a file and AOF persistence in /data.
#
# appendfsync always: Redis writes and fsyncs the AOF before it answers a write, so whatever the JobManager
# was told is done (a job posted and charged, started, finished, queued again) survives redis-server being
# SIGKILLed, or the machine going down, at any moment. With everysec the last second of acknowledged writes
# can be lost (two, while an fsync is slow: Redis then postpones the write). Postgres cannot make those up:
# it has the render and its charge, but not the scene or the queue. (Redis 7.0, Debian 12's, has no WAITAOF.)
# Measured here, the queue bench's Redis pattern (JobManager.post's transaction, then a worker's dequeue,
# start, heartbeat, scene read and finish) costs 3.6 ms a job with everysec and 5.4 ms with always
# (500 jobs: 1.78 s vs 2.69 s, medians of 5), beside about 25 ms a job for a whole render through the queue.
#
# The password goes into a config file only the redis user can read, never onto a command line
# (so neither `docker inspect` nor `ps` shows it). Extra arguments are passed on to redis-server.
set -eu

pwfile="${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}"
conf=/run/redis/redis.conf

if [ ! -s "$pwfile" ]; then
    echo "renderdev-redis: no password in $pwfile (mount a secret there, or set REDIS_PASSWORD_FILE)" >&2
    exit 1
fi

umask 077
mkdir -p /run/redis
password="$(cat "$pwfile")"
cat > "$conf" <<CONF
bind * -::*
port 6379
protected-mode yes
dir /data
appendonly yes
appendfsync always
requirepass "$password"
# Keyspace events for hashes: the API pushes each change of a job's ledger hash to the page (renderfarm/page.py).
notify-keyspace-events Kh
CONF
unset password

if [ "$(id -u)" = 0 ]; then
    chown redis:redis /data /run/redis "$conf"
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$conf" "$@"
fi
exec redis-server "$conf" "$@"
