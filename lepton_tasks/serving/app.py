"""The serving app: MLflow's scoring protocol and app, the champion swapped in as it moves.

`/invocations` speaks MLflow's scoring protocol. JSON tensors (`inputs` / `instances`) are
checked against the model's signature first, so a bad request gets a 400 with one line saying
what is wrong, then predicted by the Keras model MLflow's pyfunc loaded, in one call; CSV and
Parquet bodies go through MLflow's own `invocations`. Every other path (`/version`...) is MLflow's scoring app for the
version being served. `/v2/...` is the Open Inference Protocol (KServe's), `/metrics` is
Prometheus. A request holds the version it started with: a swap never fails one in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton_tasks.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

# Images in one request at most: a bound on memory that a client cannot lift.
MAX_IMAGES = 4096
CONCURRENT_PREDICTIONS = 4
JSON_KEYS = ("inputs", "instances")


class BadRequest(Exception):
    """What is wrong with a request, in one line; `reason` labels the metric."""

    def __init__(self, message: str, reason: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.reason, self.status = message, reason, status


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to answer."""

    version: str
    pyfunc: Any
    scoring_app: Any  # MLflow's scoring app (FastAPI) for this model
    input_shape: tuple[int, ...]
    class_names: list[str]
    # probabilities for a checked float32 batch: the Keras model MLflow loaded, one call
    predict: Callable[[np.ndarray], Any]


def load_version(model_name: str, version: str) -> LoadedModel:
    """Load `models:/<name>/<version>` as MLflow's pyfunc and warm it with one prediction."""
    import keras
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    keras.utils.disable_interactive_logging()  # no progress bar per request in the log
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    spec = model.metadata.get_input_schema().inputs[0]
    shape = tuple(int(d) for d in spec.shape[1:])
    metadata = model.metadata.metadata or {}
    # The pyfunc's predict runs Keras' whole predict loop per call (about 50 ms here); on a
    # batch already checked against the signature, one predict_on_batch gives the same numbers.
    raw = model.get_raw_model()
    predict = raw.predict_on_batch if isinstance(raw, keras.Model) else model.predict
    outputs = predict(np.zeros((1, *shape), np.float32))  # builds the graph before traffic
    names = [str(c) for c in metadata.get("class_names", range(np.asarray(outputs).shape[-1]))]
    return LoadedModel(version, model, scoring_server.init(model), shape, names, predict)


def images_from(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 batch of `shape` images from nested lists; raises BadRequest saying why not."""
    try:
        images = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest(
            "inputs must be a rectangular array of numbers (images of equal size)", "not_numbers"
        ) from None
    images = _as_batch(images, shape)
    if images is None:
        raise BadRequest(
            f"an array of shape {list(np.shape(values))}; this model takes images of shape "
            f"{list(shape)} (a batch: [n, {', '.join(map(str, shape))}])",
            "shape",
        )
    if not 0 < len(images) <= MAX_IMAGES:
        raise BadRequest(f"{len(images)} images; send 1 to {MAX_IMAGES} per request", "count")
    if not np.isfinite(images).all():
        raise BadRequest("NaN or infinite pixel values", "not_finite")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise BadRequest(
            f"pixel values span [{low:g}, {high:g}]; this model takes raw pixels in [0, 255]",
            "range",
        )
    return images


def _as_batch(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A batch of `shape` images, from a batch or a single image, with or without the channel
    axis of grey images; None when the array is none of these."""
    grey = shape[:-1] if shape and shape[-1] == 1 else None
    if images.shape[1:] == shape:
        return images
    if images.shape == shape:
        return images[np.newaxis]
    if grey is not None and images.shape[1:] == grey:
        return images[..., np.newaxis]
    if grey is not None and images.shape == grey:
        return images[np.newaxis, ..., np.newaxis]
    return None


def parse_json(body: bytes) -> Any:
    """The body as JSON, or BadRequest: malformed, nested too deep, numbers too long."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}", "not_json") from None
    except (ValueError, RecursionError) as exc:  # 10**5000 as text, [[[[... a thousand deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BadRequest(f"the body is not usable JSON: {reason}", "not_json") from None


def json_images(body: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The images of an MLflow JSON request (`inputs` or `instances`)."""
    payload = parse_json(body)
    key = next((k for k in JSON_KEYS if isinstance(payload, dict) and k in payload), None)
    if key is None:
        found = sorted(payload)[:5] if isinstance(payload, dict) else type(payload).__name__
        raise BadRequest(
            f"expected a JSON object with 'inputs' (images of shape {list(shape)}); got {found}",
            "no_inputs",
        )
    return images_from(payload[key], shape)


class _ToScoringApp:
    """An ASGI endpoint handing the request to MLflow's scoring app of the version served."""

    def __init__(self, app: ServingApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import PlainTextResponse

        loaded = self.app.current
        if loaded is None:
            response = PlainTextResponse("no champion loaded yet\n", status_code=503)
            await response(scope, receive, send)
            return
        await loaded.scoring_app(scope, receive, send)


class ServingApp:
    """The ASGI app: routes of its own, and MLflow's app for the rest."""

    def __init__(self, model_name: str, max_body_bytes: int) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        # requests parsed and predicted at once; the others wait their turn (memory: this
        # many bodies in flight, whatever the clients do)
        self.busy = asyncio.Semaphore(CONCURRENT_PREDICTIONS)
        self.metrics = ServingMetrics(model_name)
        self.current: LoadedModel | None = None
        self.app = Starlette(
            routes=[
                Route("/metrics", self._timed("metrics", self.metrics_page)),
                Route("/ping", self._timed("ping", self.ping)),
                Route("/health", self._timed("ping", self.ping)),
                Route(
                    "/invocations", self._timed("invocations", self.invocations), methods=["POST"]
                ),
                Route("/v2/health/live", self._timed("v2_live", self.live)),
                Route("/v2/health/ready", self._timed("v2_ready", self.ping)),
                Route("/v2", self._timed("v2_server", self.v2_server)),
                Route("/v2/models/{model}", self._timed("v2_metadata", self.v2_metadata)),
                Route("/v2/models/{model}/ready", self._timed("v2_model_ready", self.v2_ready)),
                Route(
                    "/v2/models/{model}/infer",
                    self._timed("v2_infer", self.v2_infer),
                    methods=["POST"],
                ),
                # MLflow's own scoring app answers what it adds (its version); nothing else
                Route("/version", _ToScoringApp(self)),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def swap(self, loaded: LoadedModel) -> None:
        """Serve `loaded` from the next request on; requests in flight finish on theirs."""
        previous = self.current.version if self.current else None
        self.current = loaded
        self.metrics.swapped(loaded.version)
        log.info("serving %s v%s (was v%s)", self.model_name, loaded.version, previous)

    def _timed(self, endpoint: str, handler: Callable[[Any], Awaitable[Any]]) -> Callable[..., Any]:
        async def timed(request: Any) -> Any:
            from starlette.responses import JSONResponse

            started = time.perf_counter()
            try:
                response = await handler(request)
            except Exception:  # a fault of the server's, not the request's: count it, say so
                log.exception("%s failed", endpoint)
                response = JSONResponse(
                    {"error_code": "INTERNAL_ERROR", "message": "the server failed; see its log"},
                    status_code=500,
                )
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
            return response

        return timed

    async def ping(self, request: Any) -> Any:
        from starlette.responses import Response

        if self.current is None:
            return Response("no champion loaded yet\n", status_code=503)
        return Response("\n", status_code=200, media_type="application/json")

    async def live(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response("\n", status_code=200)

    async def metrics_page(self, request: Any) -> Any:
        from starlette.responses import Response

        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    async def invocations(self, request: Any) -> Any:
        loaded = self.current  # this request's version, whatever happens meanwhile
        try:
            if loaded is None:
                raise BadRequest("no champion loaded yet", "not_ready", status=503)
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "application/json":
                raise BadRequest(
                    f"content type {content_type or 'none'!r}: this model takes images as JSON "
                    'tensors ({"inputs": [...]}, application/json); CSV and Parquet fit '
                    "tabular models only",
                    "content_type",
                    status=415,
                )
            body = await self._body(request)
            async with self.busy:  # parsing and predicting hold the CPU: bounded, off the loop
                probabilities = await asyncio.to_thread(self._json_predict, loaded, body)
        except BadRequest as bad:
            return self._refuse(bad)
        payload = json.dumps({"predictions": probabilities.tolist()})
        return self._answer(loaded, payload)

    def _json_predict(self, loaded: LoadedModel, body: bytes) -> np.ndarray:
        return self._predict(loaded, json_images(body, loaded.input_shape))

    def _predict(self, loaded: LoadedModel, images: np.ndarray) -> np.ndarray:
        from mlflow.exceptions import MlflowException

        try:
            probabilities = np.asarray(loaded.predict(images), dtype=np.float32)
        except MlflowException as exc:  # the signature refused it
            raise BadRequest(str(exc.message).splitlines()[0], "signature") from None
        self.metrics.served(loaded.version, images, probabilities, loaded.class_names)
        return probabilities

    def _answer(self, loaded: LoadedModel, payload: str) -> Any:
        from starlette.responses import Response

        headers = {"X-Lepton-Model": f"{self.model_name}/{loaded.version}"}
        return Response(payload, media_type="application/json", headers=headers)

    def _refuse(self, bad: BadRequest) -> Any:
        from starlette.responses import JSONResponse

        self.metrics.rejected.labels(bad.reason).inc()
        code = "BAD_REQUEST" if bad.status < 500 else "TEMPORARILY_UNAVAILABLE"
        return JSONResponse({"error_code": code, "message": bad.message}, status_code=bad.status)

    async def _body(self, request: Any) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BadRequest(self._too_large(), "too_large", status=413)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_body_bytes:
                raise BadRequest(self._too_large(), "too_large", status=413)
        return bytes(body)

    def _too_large(self) -> str:
        return f"the body is larger than LEPTON_SERVE_MAX_BODY_BYTES ({self.max_body_bytes:,})"

    async def _delegate(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import PlainTextResponse

        loaded = self.current
        if loaded is None:
            await PlainTextResponse("no champion loaded yet\n", status_code=503)(
                scope, receive, send
            )
            return
        await loaded.scoring_app(scope, receive, send)

    async def v2_server(self, request: Any) -> Any:
        from lepton_tasks.serving.inference_v2 import server_metadata

        return server_metadata()

    async def v2_ready(self, request: Any) -> Any:
        from lepton_tasks.serving.inference_v2 import model_ready

        return model_ready(self, request)

    async def v2_metadata(self, request: Any) -> Any:
        from lepton_tasks.serving.inference_v2 import metadata

        return metadata(self, request)

    async def v2_infer(self, request: Any) -> Any:
        from lepton_tasks.serving.inference_v2 import infer

        return await infer(self, request)
