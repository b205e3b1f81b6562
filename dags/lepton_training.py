"""
### Lepton nightly retraining

`ingest → validate → train → evaluate → register`, each step a `lepton-tasks` command run as a
local process, a Docker container or a Kubernetes pod (`LEPTON_RUNTIME`).

* **When**: every night (`LEPTON_SCHEDULE`, default 02:00 UTC) and whenever a batch lands: the
  triggerer watches the landing zone (`LEPTON_LANDING_POLL_S`, default 15 s) and updates the
  `lepton_landing_zone` asset.
* **Backfills**: a run for logical date D reads the batches landed by D (the date in their
  name, else their modification time): `airflow backfill create` rebuilds past nights.
* **Unchanged**: when the data, params, code and champion are those of an earlier successful
  run, `anything_new` skips the steps; the run's note says "Unchanged since vN".
* **Data**: `source` is read whole (a landing zone is every batch in it) into a content-addressed
  snapshot; Great Expectations checks it, with drift against the champion's snapshot. Bad
  batches are moved to `_quarantine/` beside the batches, with the reason.
* **Model**: trained, scored with the champion on the same test split, registered in MLflow
  with its lineage. `champion` moves only when the gate says so (or when forced, with a reason).
* **MLflow**: one pipeline run per DAG run, tagged with this DAG run; every step's run is
  nested under it. Each task links to its MLflow run; register links to the model version.
* **Alerts**: a failing step posts its one-line reason through the Slack provider's webhook
  notifier, to the Connection `lepton_alert_webhook` (none: no alert).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, Param, dag

from lepton_airflow.landing_watch import LandingZoneTrigger
from lepton_airflow.notifiers import failure_callbacks
from lepton_airflow.operator_factory import param_value, proceed_if_changed, step_operator
from lepton_airflow.settings import runtime_settings
from lepton_tasks.model_catalog import installed_models

settings = runtime_settings()
landing_zone = Asset(
    name="lepton_landing_zone",
    uri=f"file://{settings.landing}",
    watchers=[
        AssetWatcher(
            name="lepton_landing_watch",
            trigger=LandingZoneTrigger(zone=settings.landing, poll_s=settings.landing_poll_s),
        )
    ],
)
# The run's logical date; none for a run started by a landing or triggered without one.
LOGICAL_DATE = "{{ dag_run.logical_date.isoformat() if dag_run.logical_date else '' }}"


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
            description="Landing-zone folder, sklearn:digits, an IDX folder, .npz, .parquet, "
            ".csv, .tfrecord, or a folder of class folders of images.",
        ),
        "format": Param(
            "auto",
            enum=["auto", "sklearn", "idx", "npz", "parquet", "csv", "tfrecord", "images"],
            title="Format",
            description="auto: from the name (a folder of class folders of images: images).",
        ),
        "architecture": Param(
            "lepton_cnn",
            enum=list(installed_models()),
            title="Architecture",
            description="Lepton's own, or a model of an installed package's lepton.models "
            "entry point.",
        ),
        "model_name": Param(
            settings.model_name, type="string", minLength=1, title="Registered model"
        ),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=500,
            title="Epochs",
            description="Empty: enough for 500 optimizer steps, at least 5.",
        ),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096, title="Batch size"),
        "augment": Param(
            "none",
            enum=["none", "shift-rotate", "shift-rotate-flip"],
            title="Augmentation",
            description="Seeded random shifts and rotations while training; flips only where "
            "a mirrored image is the same class.",
        ),
        "learning_rate": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Learning rate",
            description="Empty: the architecture's own default.",
        ),
        "min_improvement": Param(
            settings.min_improvement,
            type="number",
            minimum=0,
            maximum=1,
            title="Minimum improvement",
            description="Gain over the champion needed to promote: the lower bound of its "
            "confidence interval must exceed it (LEPTON_MIN_IMPROVEMENT).",
        ),
        "force_retrain": Param(
            False,
            type="boolean",
            title="Force retrain",
            description="Train even if an earlier run trained the same data, params and code.",
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
    # Every input of a step is an argument: a param, or an upstream result's field (an XCom,
    # which also makes the edge). The run folder is only where each step writes.
    start = step_operator(
        "pipeline-start",
        dag_id="{{ dag.dag_id }}",
        dag_run_id="{{ run_id }}",
        logical_date=LOGICAL_DATE,
        dag_version="{{ ti.dag_version_id }}",
        run_type="{{ dag_run.run_type }}",
        params="{{ params | tojson }}",
    )
    run_dir = start.output["run_dir"]
    pipeline_run = start.output["mlflow_run_id"]

    ingest = step_operator(
        "ingest",
        run_dir=run_dir,
        source=param_value("source"),
        format=param_value("format"),
        # An empty landing zone skips the night instead of failing it (and paging someone).
        when_empty="{{ 'skip' if params.source == "
        + json.dumps(settings.landing)
        + " else 'fail' }}",
        as_of=LOGICAL_DATE,
    )
    check = step_operator(
        "check-inputs",
        run_dir=run_dir,
        snapshot_id=ingest.output["snapshot_id"],
        params="{{ params | tojson }}",
    )
    anything_new = proceed_if_changed(check)
    validate = step_operator(
        "validate",
        run_dir=run_dir,
        snapshot=ingest.output["snapshot_uri"],
        reference="champion",
        model_name=param_value("model_name"),
    )
    train = step_operator(
        "train",
        run_dir=run_dir,
        snapshot=validate.output["snapshot_uri"],
        architecture=param_value("architecture"),
        epochs=param_value("epochs"),
        batch_size=param_value("batch_size"),
        learning_rate=param_value("learning_rate"),
        augment=param_value("augment"),
        force_retrain=param_value("force_retrain"),
        parent_run_id=pipeline_run,
    )
    evaluate = step_operator(
        "evaluate",
        run_dir=run_dir,
        training=train.output["result_uri"],
        model_name=param_value("model_name"),
        min_improvement=param_value("min_improvement"),
        force_promotion_reason="{{ (params.force_reason or '') if params.force_promotion else '' }}",
        parent_run_id=pipeline_run,
    )
    register = step_operator(
        "register",
        run_dir=run_dir,
        evaluation=evaluate.output["result_uri"],
        validation=validate.output["result_uri"],
        parent_run_id=pipeline_run,
    )
    steps = (ingest, check, validate, train, evaluate, register)
    end = step_operator(
        "pipeline-end",
        run_dir=run_dir,
        parent_run_id=pipeline_run,
        steps=",".join(task.step for task in steps),
    )

    start >> ingest >> check >> anything_new >> validate >> train >> evaluate >> register >> end
    end.as_teardown(setups=start)


lepton_training()
