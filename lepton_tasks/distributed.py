"""Training across workers: TensorFlow's own `TF_CONFIG`, or a Kubernetes indexed Job's.

`TF_CONFIG` (JSON: `{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
"index": i}}`) makes `train` data-parallel with `MultiWorkerMirroredStrategy`: each worker reads
its part of every global batch and the gradients are all-reduced every step. Worker 0 (or the
"chief" task, if the cluster names one) is the chief: it alone logs to MLflow, writes the model
and prints the step's result; the others train in lockstep and print a worker result.

In a Kubernetes indexed Job (the Kubernetes runtime with `LEPTON_TRAIN_WORKERS` > 1), each pod
gets `JOB_COMPLETION_INDEX` and a stable host name `<job>-<index>` under the headless Service
its `subdomain` names; `cluster_from_env` builds `TF_CONFIG` from those.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from lepton_tasks.errors import UsageError

WORKER_PORT = 12345


@dataclass(frozen=True)
class Cluster:
    """This process's place in the training cluster."""

    workers: int = 1
    index: int = 0
    is_chief: bool = True

    @property
    def distributed(self) -> bool:
        """More than one worker: train with MultiWorkerMirroredStrategy."""
        return self.workers > 1


def _parse(tf_config: str) -> Cluster:
    try:
        config = json.loads(tf_config)
        cluster, task = config["cluster"], config["task"]
        chiefs, workers = cluster.get("chief", []), cluster.get("worker", [])
        kind, index = str(task["type"]), int(task["index"])
        if not isinstance(chiefs, list) or not isinstance(workers, list) or len(chiefs) > 1:
            raise TypeError("cluster.worker must be a list, cluster.chief a list of at most one")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            "TF_CONFIG must be JSON with cluster.worker (a list of host:port) and task.type/"
            f"task.index: {type(exc).__name__}: {exc}"
        ) from None
    members = {"chief": chiefs, "worker": workers}.get(kind)
    if members is None or not 0 <= index < len(members):
        raise UsageError(f"TF_CONFIG's task {kind}/{index} is not in its cluster")
    return Cluster(
        workers=len(chiefs) + len(workers),
        index=index + (len(chiefs) if kind == "worker" else 0),
        is_chief=kind == "chief" or (not chiefs and index == 0),
    )


def indexed_job_tf_config(workers: int, index: int, hostname: str, subdomain: str) -> str:
    """TF_CONFIG for pod `index` of an indexed Job whose pods are `<job>-<i>.<subdomain>`."""
    job, _, own_index = hostname.rpartition("-")
    if not job or own_index != str(index):
        raise UsageError(
            f"host name {hostname!r} is not <job>-{index}: is this pod part of an indexed Job?"
        )
    hosts = [f"{job}-{i}.{subdomain}:{WORKER_PORT}" for i in range(workers)]
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def cluster_from_env() -> Cluster:
    """The cluster from TF_CONFIG, else from an indexed Job's environment, else one worker.

    In an indexed Job the TF_CONFIG built is also exported, for TensorFlow to read.
    """
    if tf_config := os.environ.get("TF_CONFIG"):
        return _parse(tf_config)
    try:
        workers = int(os.environ.get("LEPTON_TRAIN_WORKERS", "1") or 1)
        index = os.environ.get("JOB_COMPLETION_INDEX")
        index_number = int(index) if index is not None else None
    except ValueError as exc:
        raise UsageError(
            f"LEPTON_TRAIN_WORKERS and JOB_COMPLETION_INDEX are numbers: {exc}"
        ) from None
    if workers <= 1 or index_number is None:
        return Cluster()
    subdomain = os.environ.get("LEPTON_TRAIN_WORKERS_SERVICE", "lepton-train-workers")
    os.environ["TF_CONFIG"] = indexed_job_tf_config(
        workers, index_number, socket.gethostname(), subdomain
    )
    return _parse(os.environ["TF_CONFIG"])


def is_other_worker() -> bool:
    """Whether this process is a worker other than the chief (False when TF_CONFIG is bad:
    the step then reports it)."""
    try:
        return not cluster_from_env().is_chief
    except UsageError:
        return False
