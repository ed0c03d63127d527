#!/bin/sh
# Start redis-server with its users in an ACL file in /data (the manager's password read from a secret) and AOF
# persistence in /data.
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
# Users: /data/users.acl (`aclfile`), in Redis's own data volume, so the render workers' users (granted by
# provisioner/redis_acl.py with ACL SETUSER, then ACL SAVE) survive restarts and travel with the volume. At every
# start this script rewrites the file's `user default ...` line from the secret: the manager (the API, the
# JobManager, the provisioner), `on #<sha256 of the password> ~* &* +@all`; every other line is kept. The clear
# password is in no file and on no command line (neither `docker inspect` nor `ps` shows it): only its SHA-256 is
# written, and dash's builtin printf hands it to sha256sum through a pipe. The file is the redis user's, mode 0600
# (Redis's own ACL SAVE writes it under this umask, 077, too). Extra arguments are passed on to redis-server.
#
# Why no `requirepass`, as found on Debian 12's Redis (7.0.15):
# - with an aclfile, requirepass is ignored: the file's `user default` line decides (requirepass X beside a default
#   line for Y: X is refused, Y works), while CONFIG GET requirepass still shows X;
# - an aclfile without a `user default` line leaves the default user `on nopass ~* &* +@all`, open to anyone, both
#   at start and after an ACL LOAD of such a file, with or without requirepass.
# So the safe way is the one taken here: the file always has the default line before Redis starts (and only ACL
# SAVE, which writes that line too, ever rewrites it while Redis runs; never ACL LOAD a file without it). A missing
# aclfile stops Redis at start ("Error loading ACLs"), and `user` lines in redis.conf are refused beside an aclfile.
#
# TLS (an exposed stack: compose/expose.yaml): with REDIS_TLS_PORT, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE and
# REDIS_TLS_CA_FILE set, Redis also listens with TLS on that port. The key is mounted as the host's containers' user's
# (mode 0600): as root this script copies it, with the certificates, into /run/redis/tls for the redis user. Clients
# are not asked for a certificate (`tls-auth-clients no`): their ACL user and password authenticate them.
set -eu

pwfile="${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}"
conf=/run/redis/redis.conf
acl=/data/users.acl

if [ ! -s "$pwfile" ]; then
    echo "renderdev-redis: no password in $pwfile (mount a secret there, or set REDIS_PASSWORD_FILE)" >&2
    exit 1
fi

if [ -L "$acl" ]; then
    echo "renderdev-redis: $acl is a symbolic link; it must be a file (remove it: the next start writes one with the manager only)" >&2
    exit 1
fi

umask 077
mkdir -p /run/redis
password="$(cat "$pwfile")"
digest="$(printf '%s' "$password" | sha256sum)"
unset password
digest="${digest%% *}"

# The default user's line first, from the secret; then every other line of the file as it was.
tmp="$(mktemp "$acl.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
printf 'user default on #%s ~* &* +@all\n' "$digest" > "$tmp"
if [ -e "$acl" ]; then
    grep -Ev '^[[:space:]]*user[[:space:]]+default([[:space:]]|$)' "$acl" >> "$tmp" || [ $? -eq 1 ]
fi
chmod 0600 "$tmp"
if [ "$(id -u)" = 0 ]; then
    chown redis:redis "$tmp"
fi
mv -f "$tmp" "$acl"
trap - EXIT
unset digest

cat > "$conf" <<CONF
bind * -::*
port 6379
protected-mode yes
dir /data
appendonly yes
appendfsync always
aclfile $acl
# Keyspace events for hashes: the API pushes each change of a job's ledger hash to the page (renderfarm/page.py).
notify-keyspace-events Kh
CONF

if [ -n "${REDIS_TLS_PORT:-}" ]; then
    for f in "${REDIS_TLS_CERT_FILE:?}" "${REDIS_TLS_KEY_FILE:?}" "${REDIS_TLS_CA_FILE:?}"; do
        if [ ! -s "$f" ]; then
            echo "renderdev-redis: TLS file $f is missing or empty (invoke services --expose ADDRESS makes it)" >&2
            exit 1
        fi
    done
    mkdir -p /run/redis/tls
    cp "$REDIS_TLS_CERT_FILE" /run/redis/tls/server.crt
    cp "$REDIS_TLS_KEY_FILE" /run/redis/tls/server.key
    cp "$REDIS_TLS_CA_FILE" /run/redis/tls/ca.crt
    chmod 0600 /run/redis/tls/server.key
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /run/redis/tls
    fi
    cat >> "$conf" <<CONF
tls-port $REDIS_TLS_PORT
tls-cert-file /run/redis/tls/server.crt
tls-key-file /run/redis/tls/server.key
tls-ca-cert-file /run/redis/tls/ca.crt
tls-auth-clients no
CONF
fi

if [ "$(id -u)" = 0 ]; then
    chown redis:redis /data /run/redis "$conf"
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$conf" "$@"
fi
exec redis-server "$conf" "$@"
