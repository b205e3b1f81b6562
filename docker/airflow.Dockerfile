# syntax=docker/dockerfile:1
# Airflow for the full stack, in the shape of the official image (apache/airflow): user
# `airflow` (uid 50000, group 0, its files group-writable), AIRFLOW_HOME
# /opt/airflow, dumb-init as PID 1, curl for the healthchecks, and the official entrypoint's
# contract (docker/airflow/entrypoint.sh) except that a failed migration fails the container.
# Airflow, its providers (pyproject.toml's `airflow` extra) and MLflow's client come from the
# lock; then this repository's dags/ and plugins/, and the task library without its
# dependencies (the Lepton page reads the registry; the steps run in the task image).
# Nothing goes under /opt/lepton: that is where the lepton-data volume is mounted.
# The official Python base; a stand-in built from Debian packages may be passed where it cannot
# be pulled (scripts/containers/base-image.sh). Nothing else differs between the two.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY docker/airflow/requirements.py docker/airflow/
# Dependencies first, the project after: a DAG or plugin change rebuilds small layers only.
RUN python docker/airflow/requirements.py pyproject.toml > requirements.txt \
 && uv venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python --no-cache -c constraints.txt -r requirements.txt
COPY README.md ./
COPY lepton_tasks ./lepton_tasks
RUN uv pip install --python /opt/venv/bin/python --no-cache --no-deps .

FROM ${BASE_IMAGE} AS runtime
ARG AIRFLOW_UID=50000
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl dumb-init \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid ${AIRFLOW_UID} --gid 0 --home-dir /home/airflow --create-home airflow \
 && mkdir -p /opt/airflow/dags /opt/airflow/plugins /opt/airflow/logs \
 && chown -R ${AIRFLOW_UID}:0 /opt/airflow /home/airflow \
 && chmod -R g+rwX /opt/airflow /home/airflow
COPY --from=build /opt/venv /opt/venv
COPY docker/airflow/entrypoint.sh /entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    HOME=/home/airflow \
    PYTHONUNBUFFERED=1 \
    DUMB_INIT_SETSID=1
COPY --chown=${AIRFLOW_UID}:0 dags/ /opt/airflow/dags/
COPY --chown=${AIRFLOW_UID}:0 plugins/ /opt/airflow/plugins/
USER ${AIRFLOW_UID}:0
WORKDIR /opt/airflow
EXPOSE 8080
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD ["--help"]
