"""
### Lepton nightly retraining

`ingest → validate → train → evaluate → register`, each step a `lepton-tasks` command run as a
local process, a Docker container or a Kubernetes pod (`LEPTON_RUNTIME`).

* **When**: every night (`LEPTON_SCHEDULE`, default 02:00 UTC) and whenever the landing-zone
  asset is updated.
* **Data**: `source` is read whole (a landing zone is every batch in it) into a content-addressed
  snapshot; Great Expectations checks it, with drift against the champion's snapshot. Bad
  batches are moved to `_quarantine/` beside the batches, with the reason.
* **Model**: trained, scored with the champion on the same test split, registered in MLflow
  with its lineage. `champion` moves only when the gate says so (or when forced, with a reason).
* **MLflow**: one pipeline run per DAG run, tagged with this DAG run; every step's run is
  nested under it. Each task links to its MLflow run; register links to the model version.
* **Alerts**: a failing step posts its one-line reason to `LEPTON_ALERT_WEBHOOK_URL`.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag

from lepton_airflow.config import runtime_settings
from lepton_airflow.notifiers import failure_callbacks
from lepton_airflow.steps import step

settings = runtime_settings()
landing_zone = Asset(name="lepton_landing_zone", uri=f"file://{settings.landing}")


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(settings.schedule, timezone="UTC"), assets=[landing_zone]
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "lepton",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(hours=4),
        "on_failure_callback": failure_callbacks(),
    },
    params={
        "source": Param(
            settings.landing,
            type="string",
            minLength=1,
            title="Data source",
            description="Landing-zone folder, sklearn:digits, an IDX folder, .npz or .parquet.",
        ),
        "format": Param("auto", enum=["auto", "sklearn", "idx", "npz", "parquet"], title="Format"),
        "model": Param("lepton_cnn", enum=["lepton_cnn", "seed_cnn"], title="Architecture"),
        "model_name": Param("lepton-digits", type="string", minLength=1, title="Registered model"),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=500,
            title="Epochs",
            description="Empty: enough for 500 optimizer steps, at least 5.",
        ),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096, title="Batch size"),
        "learning_rate": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Learning rate",
            description="Empty: the architecture's own default.",
        ),
        "min_improvement": Param(
            0.0,
            type="number",
            minimum=0,
            maximum=1,
            title="Minimum improvement",
            description="Accuracy gain over the champion needed to promote.",
        ),
        "force_promotion": Param(
            False, type="boolean", title="Force promotion", description="Needs a reason."
        ),
        # Nullable, or the trigger form would demand a reason on every run.
        "force_reason": Param(
            None,
            type=["null", "string"],
            title="Reason for forcing promotion",
            description="Recorded in the registry; needed with Force promotion.",
        ),
    },
    doc_md=__doc__,
    tags=["lepton", "training"],
)
def lepton_training() -> None:
    start = step(
        "pipeline-start",
        dag_id="{{ dag.dag_id }}",
        dag_run_id="{{ run_id }}",
        logical_date="{{ logical_date or '' }}",
        dag_version="{{ ti.dag_version_id }}",
        params="{{ params | tojson }}",
    )
    run_dir = start.output["run_dir"]
    pipeline_run = start.output["mlflow_run_id"]

    ingest = step(
        "ingest",
        run_dir=run_dir,
        source="{{ params.source }}",
        format="{{ params.format }}",
        # An empty landing zone skips the night instead of failing it (and paging someone).
        when_empty="{{ 'skip' if params.source == "
        + json.dumps(settings.landing)
        + " else 'fail' }}",
    )
    validate = step(
        "validate",
        run_dir=run_dir,
        snapshot=ingest.output["snapshot_uri"],
        reference="champion",
        model_name="{{ params.model_name }}",
    )
    train = step(
        "train",
        run_dir=run_dir,
        snapshot=validate.output["snapshot_uri"],
        model="{{ params.model }}",
        epochs="{{ params.epochs if params.epochs is not none else '' }}",
        batch_size="{{ params.batch_size }}",
        learning_rate="{{ params.learning_rate if params.learning_rate is not none else '' }}",
        parent_run_id=pipeline_run,
    )
    evaluate = step(
        "evaluate",
        run_dir=run_dir,
        model=train.output["model_uri"],
        model_name="{{ params.model_name }}",
        min_improvement="{{ params.min_improvement }}",
        force_promotion_reason="{{ (params.force_reason or '') if params.force_promotion else '' }}",
        parent_run_id=pipeline_run,
    )
    register = step(
        "register",
        run_dir=evaluate.output["run_dir"],
        model_name="{{ params.model_name }}",
        parent_run_id=pipeline_run,
    )
    end = step("pipeline-end", run_dir=run_dir, parent_run_id=pipeline_run)

    start >> ingest >> validate >> train >> evaluate >> register >> end
    end.as_teardown(setups=start)


lepton_training()
