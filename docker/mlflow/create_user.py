"""Create the MLflow user the pipeline steps sign in as: a plain user, never an admin.

Run once against the server as its admin (`mlflow-init` in docker-compose.yml):
MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/_PASSWORD (the admin), LEPTON_MLFLOW_USER and
LEPTON_MLFLOW_PASSWORD (the steps' user). Idempotent: an existing user gets the password reset
and loses admin rights. The user owns (MANAGE) what it creates, the experiment and the
registered model; everything else it may only read (the server's default_permission).
"""

from __future__ import annotations

import os
import sys
import time

from mlflow.exceptions import MlflowException, RestException
from mlflow.server.auth.client import AuthServiceClient


def wait_for_server(client: AuthServiceClient, admin: str, tries: int = 60) -> None:
    for _ in range(tries):
        try:
            client.get_user(admin)
            return
        except MlflowException as exc:
            last = exc
            time.sleep(2)
    sys.exit(f"mlflow-init: the MLflow server did not answer: {last}")


def main() -> None:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    admin = os.environ["MLFLOW_TRACKING_USERNAME"]
    user = os.environ["LEPTON_MLFLOW_USER"]
    password = os.environ["LEPTON_MLFLOW_PASSWORD"]
    if user == admin:
        sys.exit("mlflow-init: the steps' user must not be the admin")
    client = AuthServiceClient(uri)
    wait_for_server(client, admin)
    try:
        client.create_user(user, password)
        print(f"mlflow-init: created user {user}")
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_user_password(user, password)
        print(f"mlflow-init: user {user} exists; password updated")
    client.update_user_admin(user, False)


if __name__ == "__main__":
    main()
