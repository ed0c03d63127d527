#!/bin/sh
# Start redis-server with a password read from a file and AOF persistence in /data.
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
appendfsync everysec
requirepass "$password"
CONF
unset password

if [ "$(id -u)" = 0 ]; then
    chown redis:redis /data /run/redis "$conf"
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$conf" "$@"
fi
exec redis-server "$conf" "$@"
