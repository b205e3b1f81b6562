#!/usr/bin/env bash
# A Docker engine for the container tests: use the one DOCKER_HOST (or the default socket) points
# at, else start Debian's dockerd in the background under $LEPTON_ENGINE_ROOT and stop it after.
#   engine.sh start         prints `export DOCKER_HOST=...` for the caller to eval
#   engine.sh start --own   an engine of this script's own even when another is reachable, so
#                           tests never touch the images, volumes or stacks of the user's engine
#   engine.sh stop          stops an engine this script started, and removes its folders
# Installs docker.io with apt-get (root or sudo) when no dockerd is on the machine.
set -euo pipefail

ROOT=${LEPTON_ENGINE_ROOT:-/var/tmp/lepton-engine}
SOCK=$ROOT/docker.sock
PIDFILE=$ROOT/dockerd.pid
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

reachable() { docker ${1:+-H "$1"} version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_engine() {
  command -v dockerd >/dev/null && command -v docker >/dev/null && return 0
  command -v apt-get >/dev/null || { echo "engine.sh: no dockerd and no apt-get: install Docker Engine" >&2; exit 1; }
  echo "engine.sh: apt-get install docker.io" >&2
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
}

start() {
  if [ "${1:-}" != --own ] && reachable "${DOCKER_HOST:-}"; then
    echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"; return
  fi
  if reachable "unix://$SOCK"; then echo "export DOCKER_HOST=unix://$SOCK"; return; fi
  install_engine
  $sudo mkdir -p -m 700 "$ROOT"
  # the engine runs as root from this folder: refuse one that someone else made or can write
  if [ "$($sudo stat -c '%u %a' "$ROOT")" != "0 700" ]; then
    echo "engine.sh: $ROOT must belong to root with mode 700; remove it or set LEPTON_ENGINE_ROOT" >&2
    exit 1
  fi
  $sudo mkdir -p "$ROOT/data" "$ROOT/exec"
  # overlay2 on the root disk. The host's network settings are left alone: no iptables rules,
  # no IP forwarding, no default bridge (docker0). User-defined bridge networks, which Compose
  # makes for its own network, still work with Docker's DNS between containers, and published
  # loopback ports answer through the userland proxy; containers do not reach the outside
  # (image builds use --network host).
  $sudo sh -c "nohup dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false \
    --ip-forward=false --bridge=none --data-root='$ROOT/data' --exec-root='$ROOT/exec' \
    --pidfile='$PIDFILE' -H 'unix://$SOCK' >'$ROOT/dockerd.log' 2>&1 &"
  for _ in $(seq 60); do
    reachable "unix://$SOCK" && { echo "export DOCKER_HOST=unix://$SOCK"; return; }
    sleep 1
  done
  echo "engine.sh: dockerd did not come up; its log:" >&2; tail -20 "$ROOT/dockerd.log" >&2; exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  pid=$(cat "$PIDFILE")
  $sudo kill "$pid" 2>/dev/null || true
  for _ in $(seq 30); do $sudo kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if $sudo kill -0 "$pid" 2>/dev/null; then
    echo "engine.sh: dockerd $pid did not stop; its folders are left in $ROOT" >&2; return 1
  fi
  # dockerd leaves its network namespace mount behind; remove only what start() created
  $sudo umount "$ROOT/exec/netns/default" 2>/dev/null || true
  $sudo rm -rf "$ROOT/data" "$ROOT/exec" "$SOCK" "$PIDFILE" "$ROOT/dockerd.log"
  $sudo rmdir "$ROOT" 2>/dev/null || true
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop ;;
  *) echo "usage: engine.sh start [--own] | stop" >&2; exit 2 ;;
esac
