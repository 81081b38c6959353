#!/usr/bin/env bash
# Airflow on this repository's DAG and plugins with local defaults: `airflow_local.sh ARGS...` runs
# `airflow ARGS...`; `airflow_local.sh standalone` also waits for the UI and prints how to log in.
# Anything already set in the environment (AIRFLOW_HOME, AIRFLOW__*, IMAGE_EMBEDDINGS_*) wins.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$repo/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$repo/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$repo/plugins}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
# Each task may run a Beam pipeline: a laptop runs a few at a time, not Airflow's default 32.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
# The scheduler's log server holds 8793 and the triggerer's 8794.
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
# Workers reach the execution API through the base URL: it must name the port above.
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://localhost:$AIRFLOW__API__PORT}"
# Scheduler, workers, API server and the CLI share one SQLite file: wait for its lock (60 s)
# instead of failing after SQLite's default 5 s.
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=60}"
mkdir -p "$AIRFLOW_HOME"

# `airflow db migrate` takes seconds: run it once per database and locked dependency set.
stamp="$AIRFLOW_HOME/.migrated-$(cat "$repo/requirements.txt" <(echo "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") | cksum | cut -d' ' -f1)"
if [[ ! -f "$stamp" ]]; then
    airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || {
        cat "$AIRFLOW_HOME/db-migrate.log" >&2
        exit 1
    }
    rm -f "$AIRFLOW_HOME"/.migrated-*
    touch "$stamp"
fi

if [[ "${1:-}" != "standalone" ]]; then
    exec airflow "$@"
fi

# Prints how to log in once the UI answers; gives up when Airflow ($1) has stopped.
announce() {
    local url="http://localhost:$AIRFLOW__API__PORT"
    local passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
    while kill -0 "$1" 2>/dev/null; do
        if curl -fs "$url/api/v2/monitor/health" >/dev/null 2>&1 && [[ -s "$passwords" ]]; then
            cat <<MESSAGE

  Airflow is up: $url (DAG: $url/dags/image_embeddings)
  Log in as admin with the password in $passwords:
    $(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$passwords")
  The DAG starts paused: unpause it, or trigger a run for one day from its page.
  Ctrl-C stops Airflow.

MESSAGE
            return
        fi
        sleep 1
    done
}

announce $$ &
# In the foreground, so that Ctrl-C reaches Airflow and it stops its components.
exec airflow standalone
