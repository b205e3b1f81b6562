#!/usr/bin/env bash
# make test-stack: docker-compose.yml up for real, and the tests in tests/containers against it.
#  1. install what is missing (Debian's docker.io and mmdebstrap), as root or via sudo
#  2. an engine of its own, started here and stopped (its folders removed) at the end
#  3. Compose v2: the machine's own, else a pinned binary (scripts/containers/compose.sh)
#  4. the images the compose file uses: Lepton's (task, MLflow, Airflow) built from docker/ on
#     the official Python base where it can be pulled, else on a stand-in built from Debian's
#     packages (scripts/containers/base-image.sh), nothing else differing; third-party images
#     (PostgreSQL, Redis, Prometheus, statsd-exporter) pulled at their pins where possible, else
#     stand-ins from scripts/containers/standins/, passed to the tests as image variables
#  5. pytest tests/containers (under CI=true a missing engine, Compose or image fails the run)
# LEPTON_KEEP_ENGINE=1 keeps an engine this script started, with its images, for the next run;
# LEPTON_TEST_ENGINE=reuse uses the engine DOCKER_HOST (or the default socket) reaches instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
LOGS=$(mktemp -d)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

need=()
# an engine already reachable (Docker Desktop, rootless, remote) is used as it is
docker version >/dev/null 2>&1 || command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "test-stack: apt-get install ${need[*]}"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test-stack: missing ${need[*]} and no apt-get" >&2
  fi
fi

# An engine of its own (LEPTON_TEST_ENGINE=reuse: the reachable one): the tests build lepton/*
# images and bring up the compose project `lepton`, which must not be the user's.
own_socket=unix://${LEPTON_ENGINE_ROOT:-/var/tmp/lepton-engine}/docker.sock
started_here=""
docker -H "$own_socket" version >/dev/null 2>&1 || started_here=1
cleanup() {
  rm -rf "$LOGS"
  if [ -n "$started_here" ] && [ -z "${LEPTON_KEEP_ENGINE:-}" ]; then
    scripts/containers/engine.sh stop
  fi
}
trap cleanup EXIT
if [ "${LEPTON_TEST_ENGINE:-own}" = reuse ]; then
  env_line=$(scripts/containers/engine.sh start) || env_line=""
else
  env_line=$(scripts/containers/engine.sh start --own) || env_line=$(scripts/containers/engine.sh start) || env_line=""
fi
if [ -n "$env_line" ]; then
  eval "$env_line"
  [ "$DOCKER_HOST" = "$own_socket" ] || echo "test-stack: using the engine at $DOCKER_HOST" >&2
else
  echo "test-stack: no Docker engine" >&2
  [ -n "${CI:-}" ] && exit 1
fi
if compose_env=$(scripts/containers/compose.sh); then
  eval "$compose_env"
else
  echo "test-stack: no Compose v2" >&2
  [ -n "${CI:-}" ] && exit 1
fi

# build DOCKERFILE TAG [ARG=VALUE ...] in the background, its log kept for a failure
builds=()
build() {
  local dockerfile=$1 tag=$2 context=${CONTEXT:-.}
  shift 2
  local args=() log
  for arg in "$@"; do args+=(--build-arg "$arg"); done
  log="$LOGS/$(echo "$tag" | tr '/:' '__').log"
  (
    start=$(date +%s)
    if DOCKER_BUILDKIT=0 docker build --network host "${args[@]}" -f "$dockerfile" -t "$tag" \
      "$context" >"$log" 2>&1; then
      echo "test-stack: $tag built in $(($(date +%s) - start)) s"
    else
      echo "test-stack: building $tag failed:" >&2; tail -40 "$log" >&2; exit 1
    fi
  ) &
  builds+=($!)
}
wait_builds() {
  local failed=0
  for pid in "${builds[@]}"; do wait "$pid" || failed=1; done
  builds=()
  return $failed
}

# the official image of a compose variable (its default in docker-compose.yml), pulled, or a
# stand-in built here and named in `standins` (VARIABLE=IMAGE) for the tests
third_party() {
  local variable=$1 standin=$2 official
  official=$(sed -n "s/.*\${$variable:-\([^}]*\)}.*/\1/p" docker-compose.yml | head -1)
  if docker image inspect "$official" >/dev/null 2>&1 || docker pull -q "$official" >/dev/null 2>&1; then
    return 0
  fi
  echo "test-stack: $official cannot be pulled; a stand-in from Debian's packages" >&2
  CONTEXT=scripts/containers/standins build "scripts/containers/standins/$standin.Dockerfile" \
    "lepton/standin-$standin:$VERSION" "BASE_IMAGE=$base"
  standins+=("$variable=lepton/standin-$standin:$VERSION")
}

if docker version >/dev/null 2>&1; then
  base=$(scripts/containers/base-image.sh python:3.11.14-slim-bookworm)
  for image in task mlflow airflow; do
    build "docker/$image.Dockerfile" "lepton/$image:$VERSION" "BASE_IMAGE=$base"
  done
  standins=()
  third_party POSTGRES_IMAGE postgres
  third_party REDIS_IMAGE redis
  third_party PROMETHEUS_IMAGE prometheus
  third_party STATSD_EXPORTER_IMAGE statsd-exporter
  wait_builds
  LEPTON_STANDIN_IMAGES=$(IFS=,; echo "${standins[*]}")
  export LEPTON_STANDIN_IMAGES
fi
"$BIN/pytest" tests/containers ${PYTEST_ARGS:-}
