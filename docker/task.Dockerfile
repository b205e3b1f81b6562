# syntax=docker/dockerfile:1
# The task image: `lepton-tasks` as entrypoint, the same CLI the operators call.
#   CPU:  docker build -f docker/task.Dockerfile -t lepton/task:0.1.0 .
#   GPU:  docker build -f docker/task.Dockerfile --build-arg TF_EXTRA=gpu -t lepton/task-gpu:0.1.0 .
# Versions come from pyproject.toml (direct pins) and constraints.txt (the lock): no second list.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TF_EXTRA=cpu
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY lepton_tasks ./lepton_tasks
RUN uv venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python --no-cache -c constraints.txt ".[${TF_EXTRA}]"

FROM ${PYTHON_IMAGE} AS runtime
ARG LEPTON_UID=10001
RUN groupadd --system --gid ${LEPTON_UID} lepton \
 && useradd --system --uid ${LEPTON_UID} --gid lepton --create-home --home-dir /home/lepton lepton \
 && mkdir -p /opt/lepton && chown lepton:lepton /opt/lepton
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    LEPTON_HOME=/opt/lepton \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GX_ANALYTICS_ENABLED=False
USER lepton
WORKDIR /home/lepton
ENTRYPOINT ["lepton-tasks"]
CMD ["--help"]
