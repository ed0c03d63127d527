#!/usr/bin/env bash
# Prepare a Debian 12 host for renderdev: a Docker engine, Compose v2, debootstrap; start dockerd.
# Idempotent: on a ready host it checks and changes nothing. Needs root (or sudo).
set -euo pipefail

log() { printf 'install-host: %s\n' "$*"; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v xz >/dev/null 2>&1 || need_apt+=(xz-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Compose v2: Debian 12 only ships v1; Debian 13's docker-compose package is the v2 plugin (a static
# Go binary needing libc6 >= 2.34). Fetch that one package without touching the host's apt sources.
if ! docker compose version >/dev/null 2>&1; then
  log "installing the Compose v2 plugin from Debian 13's docker-compose package"
  t=$(mktemp -d)
  mkdir -p "$t/lists/partial"
  echo 'deb http://deb.debian.org/debian trixie main' > "$t/sources.list"
  o=(-oDir::Etc::SourceList="$t/sources.list" -oDir::Etc::SourceParts=/dev/null -oDir::State::Lists="$t/lists")
  $SUDO apt-get "${o[@]}" update -qq
  (cd "$t" && $SUDO apt-get "${o[@]}" download docker-compose >/dev/null)
  dpkg -x "$t"/docker-compose_*.deb "$t/root"
  $SUDO install -D "$t/root/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/libexec/docker/cli-plugins/docker-compose
  rm -rf "$t"
fi

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    log "starting docker with systemctl"
    $SUDO systemctl start docker
  else
    log "starting dockerd in the background (log: /var/log/dockerd.log)"
    # A dockerd that was killed leaves its pid file behind and the next start refuses to run.
    $SUDO rm -f /var/run/docker.pid
    $SUDO setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log; exit 1; }
fi
log "docker $(docker version --format '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || echo 'compose v1')"
