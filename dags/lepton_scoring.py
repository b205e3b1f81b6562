"""
### Lepton batch scoring

`score`: every batch in the scoring inbox, predicted by the champion of `model_name`.

* **When**: whenever a batch lands in the scoring inbox (`LEPTON_SCORING_INBOX_URI`, the landing
  protocol: write under a `.`/`_` name, rename when complete); the triggerer watches it.
* **What**: any format ingest reads, labels optional. The champion is pinned by version for the
  whole batch. Each batch becomes one Parquet file (key, predicted class, probabilities, model
  name and version, scored_at) under `<LEPTON_PREDICTIONS_URI>/<model>/<run>/`, then moves to
  `<inbox>/_scored/`. Labelled batches also report the champion's accuracy (feedback).
* **Bad input**: the batch moves to `<inbox>/_quarantine/` with the reason; the task fails with
  the step's one-line error.
* **Downstream**: the `lepton_predictions` asset is updated; schedule a consumer on it.
* **MLflow**: one run per scoring task in the `<experiment>-production` experiment, tagged
  with the model version; the monitor reads them.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetWatcher, Param, dag

from lepton_airflow.landing_watch import LandingZoneTrigger
from lepton_airflow.notifiers import failure_callbacks
from lepton_airflow.operator_factory import param_value, step_operator
from lepton_airflow.settings import runtime_settings

settings = runtime_settings()
scoring_inbox = Asset(
    name="lepton_scoring_inbox",
    uri=f"file://{settings.scoring_inbox}",
    watchers=[
        AssetWatcher(
            name="lepton_scoring_watch",
            trigger=LandingZoneTrigger(
                zone=settings.scoring_inbox, poll_s=settings.landing_poll_s, unlabelled=True
            ),
        )
    ],
)
predictions_root = settings.predictions_root
# Named, not located: the folder is configuration, and an asset's URI is its identity (a
# moved LEPTON_PREDICTIONS_URI must not make it another asset). Each event's run says where.
predictions = Asset(name="lepton_predictions")
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# One folder per run; a run id holds ':' and '+', which object stores and shells dislike.
RUN_FOLDER = "{{ run_id | replace(':', '') | replace('+', '') }}"


@dag(
    schedule=[scoring_inbox],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "lepton",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=4),
        "on_failure_callback": failure_callbacks(),
    },
    params={
        # A folder name of the output too: no '/', and never '..'.
        "model_name": Param(
            settings.model_name,
            type="string",
            pattern=MODEL_NAME_PATTERN,
            title="Registered model",
        ),
        "input": Param(
            settings.scoring_inbox,
            type="string",
            minLength=1,
            title="What to score",
            description="The scoring inbox (each batch moves to _scored/ once scored), or any "
            "dataset ingest reads, labels optional.",
        ),
        "format": Param(
            "auto",
            enum=["auto", "idx", "npz", "parquet", "csv", "tfrecord", "images"],
            title="Format",
        ),
    },
    doc_md=__doc__,
    tags=["lepton", "scoring"],
)
def lepton_scoring() -> None:
    step_operator(
        "score",
        model_name=param_value("model_name"),
        input=param_value("input"),
        format=param_value("format"),
        output=f"{predictions_root}/{{{{ params.model_name }}}}/{RUN_FOLDER}",
        operator_kwargs={"outlets": [predictions]},
    )


lepton_scoring()
