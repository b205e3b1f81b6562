#!/usr/bin/env bash
# Airflow (standalone: api-server, scheduler, dag-processor, triggerer on SQLite) and the MLflow UI,
# both on localhost. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/airflow-env.sh
AIRFLOW_PORT=${AIRFLOW_PORT:-8080}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
export AIRFLOW__API__PORT=$AIRFLOW_PORT
export AIRFLOW__API__BASE_URL=http://localhost:$AIRFLOW_PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://localhost:$AIRFLOW_PORT/execution/
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}
# Links from Airflow to MLflow point here (see plugins/lepton_airflow).
export LEPTON_MLFLOW_UI_URL=${LEPTON_MLFLOW_UI_URL:-http://localhost:$MLFLOW_PORT}
mkdir -p "$AIRFLOW_HOME" "$LEPTON_HOME/logs"

mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" --backend-store-uri "$MLFLOW_TRACKING_URI" \
  >"$LEPTON_HOME/logs/mlflow-ui.log" 2>&1 &
mlflow_pid=$!
airflow standalone >"$LEPTON_HOME/logs/airflow-standalone.log" 2>&1 &
airflow_pid=$!
trap 'kill $mlflow_pid $airflow_pid 2>/dev/null; wait' EXIT INT TERM

for _ in $(seq 1 120); do
  if curl -fs "http://localhost:$AIRFLOW_PORT/api/v2/monitor/health" >/dev/null 2>&1; then break; fi
  sleep 2
done
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
Airflow: http://localhost:$AIRFLOW_PORT   user admin, password: $(python -c "import json,sys; print(json.load(open(sys.argv[1])).get('admin','see $passwords'))" "$passwords" 2>/dev/null || echo "see $passwords")
MLflow:  http://localhost:$MLFLOW_PORT   experiment 'lepton', registered model 'lepton-digits'
Logs:    $LEPTON_HOME/logs/airflow-standalone.log, $LEPTON_HOME/logs/mlflow-ui.log
Trigger lepton_training from the Airflow UI (Trigger button: the form shows its params). Ctrl-C stops both.
MSG
wait
