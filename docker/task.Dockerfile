# syntax=docker/dockerfile:1
# The task image: `lepton-tasks` as entrypoint, the same CLI the operators call.
#   CPU:  docker build -f docker/task.Dockerfile -t lepton/task:0.2.0 .
#   GPU:  docker build -f docker/task.Dockerfile --build-arg TF_EXTRA=gpu -t lepton/task-gpu:0.2.0 .
# Versions come from pyproject.toml (direct pins) and constraints.txt (the lock): no second list.
# The official base; a stand-in built from Debian packages may be passed where it cannot be
# pulled (scripts/containers/base-image.sh). Nothing else differs between the two.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TF_EXTRA=cpu
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# Dependencies first, the project after: a code change rebuilds one small layer, not TensorFlow.
RUN uv venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python --no-cache -c constraints.txt \
      -r pyproject.toml --extra "${TF_EXTRA}"
COPY README.md ./
COPY lepton_tasks ./lepton_tasks
RUN uv pip install --python /opt/venv/bin/python --no-cache --no-deps .

FROM ${BASE_IMAGE} AS runtime
ARG LEPTON_UID=10001
RUN groupadd --system --gid ${LEPTON_UID} lepton \
 && useradd --system --uid ${LEPTON_UID} --gid lepton --create-home --home-dir /home/lepton lepton \
 && mkdir -p /opt/lepton /run/lepton && chown lepton:lepton /opt/lepton /run/lepton
COPY --from=build /opt/venv /opt/venv
# The container runs with a read-only root: it writes only to the data volume (/opt/lepton),
# a tmpfs at /tmp (library caches below), and /run/lepton, where the step leaves its result or
# error file for the operator to collect (see plugins/lepton_airflow/runtimes/docker_container.py).
ENV PATH=/opt/venv/bin:$PATH \
    LEPTON_HOME=/opt/lepton \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GX_ANALYTICS_ENABLED=False \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras
# by number, so Kubernetes can check runAsNonRoot
USER ${LEPTON_UID}:${LEPTON_UID}
WORKDIR /home/lepton
ENTRYPOINT ["lepton-tasks"]
CMD ["--help"]
