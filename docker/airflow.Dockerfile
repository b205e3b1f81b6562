# syntax=docker/dockerfile:1
# Airflow for the full stack: the official image, airflow re-pinned, the providers the step
# runtimes use, this repository's dags/ and plugins/, and the task library's registry code for
# the Lepton page (MLflow client, no TensorFlow: the steps run in the task image). Nothing goes
# under /opt/lepton: that is where the lepton-data volume is mounted.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root constraints.txt /opt/lepton-src/constraints.txt
RUN pip install --no-cache-dir -c /opt/lepton-src/constraints.txt \
      "apache-airflow==3.3.2" \
      "apache-airflow-providers-standard==1.21.0" \
      "apache-airflow-providers-docker==4.6.1" \
      "apache-airflow-providers-cncf-kubernetes==10.25.0" \
      "pydantic-settings==2.16.3" \
      "mlflow==3.17.2" \
      "fsspec==2026.9.0"
COPY --chown=airflow:root pyproject.toml README.md /opt/lepton-src/src/
COPY --chown=airflow:root lepton_tasks/ /opt/lepton-src/src/lepton_tasks/
RUN pip install --no-cache-dir --no-deps /opt/lepton-src/src
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
