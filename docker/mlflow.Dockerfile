# syntax=docker/dockerfile:1
# The MLflow tracking server: Postgres backend, served artifacts, basic auth.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt \
      "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10002 mlflow \
 && useradd --system --uid 10002 --gid mlflow --create-home --home-dir /var/lib/mlflow mlflow \
 && mkdir -p /mlartifacts && chown mlflow:mlflow /mlartifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER mlflow
# the basic-auth user database (basic_auth.db) is created in the working directory
WORKDIR /var/lib/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
