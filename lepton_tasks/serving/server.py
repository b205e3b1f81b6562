"""`lepton-tasks serve`: the serving app on uvicorn, and the thread that follows the alias.

MLflow's own server loads one model once (a long-standing request: "how to update the model
when served the old model"). Here a thread looks up `champion` every LEPTON_SERVE_POLL_S; a new
version is loaded and warmed beside the old one, then swapped in. A version that fails to load
is counted and logged, and the old one keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time

from lepton_tasks.redact import redact
from lepton_tasks.serving.app import ServingApp, load_version

log = logging.getLogger(__name__)
# A version that failed to load is tried again after this long, not on every poll.
RETRY_FAILED_S = 60.0


class AliasFollower(threading.Thread):
    """Keeps `app` serving the version `champion` points at."""

    def __init__(self, app: ServingApp, poll_s: float) -> None:
        super().__init__(name="lepton-alias-follower", daemon=True)
        self.app, self.poll_s = app, poll_s
        self.stopped = threading.Event()
        self.failed: dict[str, float] = {}

    def run(self) -> None:
        while not self.stopped.wait(self.poll_s):
            self.check()

    def check(self) -> bool:
        """Look the alias up once; swap if it moved. True when a new version was swapped in."""
        from lepton_tasks import registry
        from lepton_tasks.errors import LeptonError

        try:
            version = registry.champion_number(self.app.model_name)
        except LeptonError as exc:
            log.warning("could not look up the champion: %s", exc.one_line())
            return False
        except Exception as exc:  # anything else: the thread must live on, and say so
            log.warning(
                "could not look up the champion: %s", redact(f"{type(exc).__name__}: {exc}")
            )
            return False
        current = self.app.current
        if version is None or (current is not None and current.version == version):
            return False
        if time.monotonic() - self.failed.get(version, -RETRY_FAILED_S) < RETRY_FAILED_S:
            return False
        try:
            loaded = load_version(self.app.model_name, version)
        except Exception as exc:  # any failure to load leaves the old version serving
            self.failed[version] = time.monotonic()
            self.app.metrics.load_failures.labels(self.app.model_name).inc()
            log.error(
                "v%s did not load, still serving the old one: %s",
                version,
                redact(f"{type(exc).__name__}: {exc}"),
            )
            return False
        self.app.swap(loaded)
        return True


def run_server(model_name: str, host: str, port: int, poll_s: float | None) -> None:
    """Serve until interrupted; the first champion is loaded before the port opens."""
    import uvicorn

    from lepton_tasks import tracking
    from lepton_tasks.settings import get_settings

    settings = get_settings()
    tracking.setup()
    app = ServingApp(model_name, settings.serve_max_body_bytes)
    follower = AliasFollower(app, poll_s or settings.serve_poll_s)
    if not follower.check():
        log.warning("%s has no champion yet: /ping answers 503 until one is promoted", model_name)
    follower.start()
    log.info("serving models:/%s@champion on http://%s:%d", model_name, host, port)
    # limit_concurrency: past this many connections and requests at once, a 503 at once
    # rather than one more body held in memory
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, limit_concurrency=256
    )
    follower.stopped.set()
