#!/bin/sh
# Start PostgreSQL 15. On first start (empty data folder) make the cluster:
#   initdb as user postgres, superuser $POSTGRES_USER with the password in $POSTGRES_PASSWORD_FILE,
#   trust on the local socket, scram-sha-256 over TCP from anywhere (the port is published on
#   127.0.0.1 only), then create $POSTGRES_DB on a socket-only server before the real one starts.
# Extra arguments are passed on to postgres.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
user="${POSTGRES_USER:-renderfarm}"
db="${POSTGRES_DB:-$user}"
pwfile="${POSTGRES_PASSWORD_FILE:-/run/secrets/db_password}"
initpw=/run/postgresql/initdb-password

die() { echo "renderdev-postgres: $*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
    # As root: own the data folder (a fresh volume or bind mount), hand the password to the
    # postgres user (the mounted secret may be readable by root only), then drop root.
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 0700 "$PGDATA"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        [ -s "$pwfile" ] || die "no password in $pwfile (mount a secret there, or set POSTGRES_PASSWORD_FILE)"
        install -o postgres -g postgres -m 0600 "$pwfile" "$initpw"
        export POSTGRES_PASSWORD_FILE="$initpw"
    fi
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -s "$pwfile" ] || die "no password in $pwfile (mount a secret there, or set POSTGRES_PASSWORD_FILE)"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    if [ "$pwfile" = "$initpw" ]; then rm -f "$initpw"; fi
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >> "$PGDATA/pg_hba.conf"

    # A server on the socket only: nothing outside sees it (and no health check passes) until it is ready.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    if [ "$db" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -c "CREATE DATABASE \"$db\" OWNER \"$user\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop
fi

exec postgres -D "$PGDATA" "$@"
