#!/usr/bin/env bash
# make test-containers: the steps as containers on a real Docker engine, MLflow on PostgreSQL.
#  1. install what is missing (Debian's docker.io, mmdebstrap, postgresql), as root or via sudo
#  2. use a reachable engine, or start one here and stop it (and remove its folders) at the end
#  3. build the base (the official one where it can be pulled, else a stand-in from Debian's
#     packages), then the CPU task image and the MLflow image from docker/
#  4. pytest tests/containers (under CI=true a missing engine or image fails, never skips)
# LEPTON_KEEP_ENGINE=1 keeps an engine this script started, with its images, for the next run.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

need=()
# an engine already reachable (Docker Desktop, rootless, remote) is used as it is
docker version >/dev/null 2>&1 || command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "test-containers: apt-get install ${need[*]}"
    # the tests start their own throwaway cluster: no system-wide one on port 5432
    $sudo mkdir -p /etc/postgresql-common
    [ -f /etc/postgresql-common/createcluster.conf ] ||
      echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test-containers: missing ${need[*]} and no apt-get" >&2
  fi
fi

started_here=""
if ! docker version >/dev/null 2>&1; then started_here=1; fi
if env_line=$(scripts/containers/engine.sh start); then
  eval "$env_line"
else
  echo "test-containers: no Docker engine" >&2
  [ -n "${CI:-}" ] && exit 1
fi
cleanup() {
  if [ -n "$started_here" ] && [ -z "${LEPTON_KEEP_ENGINE:-}" ]; then
    scripts/containers/engine.sh stop
  fi
}
trap cleanup EXIT

if docker version >/dev/null 2>&1; then
  base=$(scripts/containers/base-image.sh python:3.11.14-slim-bookworm)
  for image in task mlflow; do
    echo "test-containers: building lepton/$image:0.2.0 on $base"
    start=$(date +%s)
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE_IMAGE=$base" \
      -f "docker/$image.Dockerfile" -t "lepton/$image:0.2.0" . >/dev/null
    echo "test-containers: lepton/$image:0.2.0 built in $(( $(date +%s) - start )) s"
  done
fi
"$BIN/pytest" tests/containers ${PYTEST_ARGS:-}
