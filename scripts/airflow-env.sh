# Environment of the embedded stack: Airflow on SQLite with LocalExecutor, this repo's dags/ and
# plugins/, MLflow on SQLite, everything under .lepton/. Source it: `. scripts/airflow-env.sh`.
LEPTON_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LEPTON_HOME=${LEPTON_HOME:-$LEPTON_ROOT/.lepton}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$LEPTON_HOME/airflow}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$LEPTON_HOME/mlflow.db}
export AIRFLOW__CORE__DAGS_FOLDER=$LEPTON_ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$LEPTON_ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
# Unpaused from the start, so a run triggered in the UI starts at once (no catch-up: the
# schedule is a cron trigger without catchup, and asset-driven runs need an asset event).
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export GX_ANALYTICS_ENABLED=False
export PATH=$LEPTON_ROOT/.venv/bin:$PATH
