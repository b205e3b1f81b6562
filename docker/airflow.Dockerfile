# syntax=docker/dockerfile:1
# Airflow for the full stack: the official image, airflow re-pinned, the providers the step
# runtimes use, and this repository's dags/ and plugins/. The steps themselves run in the task
# image (LEPTON_RUNTIME=docker or kubernetes), so TensorFlow is not installed here.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root constraints.txt /opt/lepton/constraints.txt
RUN pip install --no-cache-dir -c /opt/lepton/constraints.txt \
      "apache-airflow==3.3.2" \
      "apache-airflow-providers-standard==1.21.0" \
      "apache-airflow-providers-docker==4.6.1" \
      "apache-airflow-providers-cncf-kubernetes==10.25.0" \
      "pydantic-settings==2.16.3"
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
