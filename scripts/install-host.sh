#!/usr/bin/env bash
# Prepare a Debian 12 host for renderdev: a Docker engine, Compose v2, debootstrap; start dockerd.
# Idempotent: on a ready host it checks and changes nothing. Needs root (or sudo).
set -euo pipefail

log() { printf 'install-host: %s\n' "$*"; }
PID_FILE=/var/run/docker.pid
DOCKER_SOCKET=/var/run/docker.sock

# The pid in a dockerd pid file ($1), printed when that process is a running dockerd; fails otherwise.
running_dockerd_pid() {
  local pid comm
  pid=$(tr -dc '0-9' 2>/dev/null < "$1") || return 1
  [ -n "$pid" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = dockerd ] || return 1
  printf '%s\n' "$pid"
}

# True when the pid file ($1) is stale: it exists and names no running dockerd (a killed dockerd left it, and
# dockerd refuses to start while its pid file names any live process). A running dockerd's file is never stale.
stale_pid_file() {
  [ -e "$1" ] || return 1
  ! running_dockerd_pid "$1" >/dev/null
}

# True when an engine runs but refuses this user: not root, the socket is there, a dockerd is running, and
# `docker info` said "permission denied" ($1: its output). Starting another dockerd would not help then.
engine_refuses_user() {
  [ "$(id -u)" != 0 ] && [ -S "$DOCKER_SOCKET" ] || return 1
  running_dockerd_pid "$PID_FILE" >/dev/null || pgrep -x dockerd >/dev/null 2>&1 || return 1
  case "$1" in *"permission denied"*) return 0 ;; esac
  return 1
}

# Sourced (by the tests), only the functions above are wanted.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v xz >/dev/null 2>&1 || need_apt+=(xz-utils)
# chromium: the browser the page tests (tests/page, Playwright) drive; no browser download
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# faketime: tests/hosts runs one worker host with its clock 2 minutes off (libfaketime)
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
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

if ! info_err=$(docker info 2>&1 >/dev/null); then
  if engine_refuses_user "$info_err"; then
    log "a Docker engine is running, but user $(id -un) may not use it: permission denied on $DOCKER_SOCKET"
    log "fix: sudo usermod -aG docker $(id -un), then log in again (or run: newgrp docker); or run this as root"
    exit 1
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    log "starting docker with systemctl"
    $SUDO systemctl start docker
  elif pid=$(running_dockerd_pid "$PID_FILE"); then
    log "dockerd (pid $pid) is running but does not answer yet: waiting for it (log: /var/log/dockerd.log)"
  else
    if stale_pid_file "$PID_FILE"; then
      # A dockerd that was killed leaves its pid file behind and the next start refuses to run.
      log "removing the stale $PID_FILE (pid $(tr -dc '0-9' 2>/dev/null < "$PID_FILE") is not a running dockerd)"
      $SUDO rm -f "$PID_FILE"
    fi
    log "starting dockerd in the background (log: /var/log/dockerd.log)"
    $SUDO setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; tail -20 /var/log/dockerd.log; exit 1; }
fi
log "docker $(docker version --format '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || echo 'compose v1')"
