#!/usr/bin/env bash
# The base image for docker/task.Dockerfile and docker/mlflow.Dockerfile.
#   base-image.sh IMAGE   prints the base to pass as --build-arg BASE_IMAGE=...
# The official base (IMAGE, e.g. python:3.11.14-slim-bookworm) is used when it can be pulled.
# Where no registry can be reached, a stand-in is built from Debian's own packages with
# mmdebstrap (python3, venv, pip, passwd), taking this machine's apt sources and CA bundle, so
# installs inside a build trust the same certificates the host does. Built once, then reused.
set -euo pipefail
official=${1:?usage: base-image.sh OFFICIAL_IMAGE}
standin=lepton/python-standin:3.11-bookworm
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

if docker image inspect "$official" >/dev/null 2>&1 || docker pull -q "$official" >/dev/null 2>&1; then
  echo "$official"; exit 0
fi
if docker image inspect "$standin" >/dev/null 2>&1; then echo "$standin"; exit 0; fi

echo "base-image.sh: $official cannot be pulled; building $standin from Debian packages" >&2
if ! command -v mmdebstrap >/dev/null; then
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# this machine's own Debian bookworm sources (the mirror it is allowed to reach), not a
# third-party repository's
sources=$(grep -l -E "^Suites:.*\bbookworm\b" /etc/apt/sources.list.d/*.sources 2>/dev/null |
  xargs -r grep -l -E "^URIs:.*debian" | head -1 || true)
[ -n "$sources" ] || sources=/etc/apt/sources.list
$sudo mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
  bookworm "$work/base.tar" "$sources" >&2
docker import "$work/base.tar" lepton/python-standin:tmp >/dev/null
cid=$(docker create lepton/python-standin:tmp /bin/true)
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] && docker cp "$ca" "$cid:/usr/local/share/host-ca.crt"
# The official image's PATH and language; pip may install into Debian's Python (the images make
# their own venvs); the host's CA bundle for pip and uv.
docker commit \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
  --change 'ENV SSL_CERT_FILE=/usr/local/share/host-ca.crt PIP_CERT=/usr/local/share/host-ca.crt' \
  --change 'CMD ["python3"]' \
  "$cid" "$standin" >/dev/null
docker rm -f "$cid" >/dev/null
docker rmi -f lepton/python-standin:tmp >/dev/null
echo "$standin"
