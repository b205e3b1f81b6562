#!/usr/bin/env bash
# The Airflow image's entrypoint: the official image's contract (apache/airflow's
# scripts/docker/entrypoint_prod.sh), with one difference: a failed migration fails.
#   CONNECTION_CHECK_MAX_COUNT (default 20), CONNECTION_CHECK_SLEEP_TIME (3 s): wait for the
#     metadata database before anything else (0 skips the wait)
#   _AIRFLOW_DB_MIGRATE=true: `airflow db migrate`; the official image runs it `|| true`, so a
#     migration that fails still "completes successfully" and the stack starts on a broken
#     database. Here the container exits with migrate's code and the stack does not start.
#   _AIRFLOW_WWW_USER_CREATE=true: the admin user (_AIRFLOW_WWW_USER_USERNAME/_PASSWORD),
#     created once, its password on stdin (never in `ps`); an existing user is left as it is
#   then `airflow "$@"`; `bash ...` or `python ...` run as they are
set -euo pipefail

wait_for_database() {
  local tries=${CONNECTION_CHECK_MAX_COUNT:-20} pause=${CONNECTION_CHECK_SLEEP_TIME:-3}
  [ "$tries" -gt 0 ] || return 0
  for ((i = 1; i <= tries; i++)); do
    if airflow db check >/dev/null 2>&1; then return 0; fi
    echo "entrypoint: the metadata database does not answer yet ($i/$tries)" >&2
    sleep "$pause"
  done
  echo "entrypoint: the metadata database did not answer after $tries tries:" >&2
  airflow db check >&2 || true
  exit 1
}

create_admin() {
  local user=${_AIRFLOW_WWW_USER_USERNAME:-admin}
  : "${_AIRFLOW_WWW_USER_PASSWORD:?_AIRFLOW_WWW_USER_CREATE needs _AIRFLOW_WWW_USER_PASSWORD}"
  # the fab provider's command; a user that exists is reported and left unchanged (exit 0).
  # The password goes to its prompt on stdin (twice: it asks to confirm), never into the
  # process arguments, which every user of the host can read (`ps`).
  printf '%s\n%s\n' "$_AIRFLOW_WWW_USER_PASSWORD" "$_AIRFLOW_WWW_USER_PASSWORD" |
    PYTHONWARNINGS="ignore::getpass.GetPassWarning" airflow users create --username "$user" \
      --firstname "${_AIRFLOW_WWW_USER_FIRSTNAME:-Airflow}" \
      --lastname "${_AIRFLOW_WWW_USER_LASTNAME:-Admin}" \
      --email "${_AIRFLOW_WWW_USER_EMAIL:-airflowadmin@example.com}" \
      --role "${_AIRFLOW_WWW_USER_ROLE:-Admin}"
}

case "${1:-}" in
  bash | sh | python | python3) exec "$@" ;;
esac
wait_for_database
if [ "${_AIRFLOW_DB_MIGRATE:-false}" = "true" ]; then
  echo "entrypoint: airflow db migrate" >&2
  if ! airflow db migrate; then
    echo "entrypoint: airflow db migrate failed: the database is not ready for this Airflow" >&2
    exit 1
  fi
fi
if [ "${_AIRFLOW_WWW_USER_CREATE:-false}" = "true" ]; then
  create_admin
fi
exec airflow "$@"
