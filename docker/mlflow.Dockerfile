# syntax=docker/dockerfile:1
# The MLflow tracking server: Postgres backend, served artifacts, basic auth.
# The official base; a stand-in built from Debian packages may be passed where it cannot be
# pulled (scripts/containers/base-image.sh). Nothing else differs between the two.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY constraints.txt ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt \
      "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "prometheus-flask-exporter==0.23.2"

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10002 mlflow \
 && useradd --system --uid 10002 --gid mlflow --create-home --home-dir /var/lib/mlflow mlflow \
 && mkdir -p /mlartifacts && chown mlflow:mlflow /mlartifacts
COPY --from=build /opt/venv /opt/venv
COPY docker/mlflow/create_user.py docker/mlflow/basic_auth.ini /opt/mlflow/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10002:10002
WORKDIR /var/lib/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
