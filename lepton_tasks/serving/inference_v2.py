"""The Open Inference Protocol v2 (KServe, Triton, MLServer): model metadata and `infer`."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_tasks.serving.app import BadRequest, images_from, parse_json

if TYPE_CHECKING:
    from lepton_tasks.serving.app import ServingApp

MAX_DIMENSION = 1 << 24
DATATYPES = {"FP32", "FP64", "FP16", "UINT8", "UINT16", "INT8", "INT16", "INT32", "INT64"}


def _not_found(app: ServingApp, name: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": f"no model '{name}' here; this serves '{app.model_name}'"}, 404)


def server_metadata() -> Any:
    from starlette.responses import JSONResponse

    from lepton_tasks import __version__

    return JSONResponse({"name": "lepton", "version": __version__, "extensions": []})


def model_ready(app: ServingApp, request: Any) -> Any:
    from starlette.responses import Response

    if request.path_params["model"] != app.model_name:
        return _not_found(app, request.path_params["model"])
    return Response(status_code=200 if app.current is not None else 503)


def metadata(app: ServingApp, request: Any) -> Any:
    from starlette.responses import JSONResponse

    if request.path_params["model"] != app.model_name:
        return _not_found(app, request.path_params["model"])
    loaded = app.current
    if loaded is None:
        return JSONResponse({"error": "no champion loaded yet"}, 503)
    return JSONResponse(
        {
            "name": app.model_name,
            "versions": [loaded.version],
            "platform": "mlflow_keras",
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *loaded.input_shape]}],
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [-1, len(loaded.class_names)],
                }
            ],
            "parameters": {"class_names": loaded.class_names},
        }
    )


def _tensor(payload: Any, shape: tuple[int, ...]) -> np.ndarray:
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("expected 'inputs': a list of one tensor", "no_inputs")
    tensor = inputs[0]
    if tensor.get("datatype") not in DATATYPES:
        raise BadRequest(
            f"datatype {tensor.get('datatype')!r}; use one of FP32, UINT8...", "datatype"
        )
    declared = tensor.get("shape")
    if not isinstance(declared, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIMENSION for d in declared
    ):
        raise BadRequest("'shape' must be a list of sizes", "shape")
    try:
        flat = np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest("'data' must be an array of numbers", "not_numbers") from None
    if math.prod(declared) != flat.size:  # Python ints: no overflow to a matching 0
        raise BadRequest(f"'shape' {declared} does not hold the {flat.size} values sent", "shape")
    return images_from(flat.reshape(declared), shape)


def _infer(app: ServingApp, loaded: Any, body: bytes) -> tuple[Any, np.ndarray]:
    payload = parse_json(body)
    return payload, app._predict(loaded, _tensor(payload, loaded.input_shape))


async def infer(app: ServingApp, request: Any) -> Any:
    from starlette.responses import JSONResponse

    if request.path_params["model"] != app.model_name:
        return _not_found(app, request.path_params["model"])
    loaded = app.current
    try:
        if loaded is None:
            raise BadRequest("no champion loaded yet", "not_ready", status=503)
        body = await app._body(request)
        async with app.busy:
            payload, probabilities = await asyncio.to_thread(_infer, app, loaded, body)
    except BadRequest as bad:
        app.metrics.rejected.labels(bad.reason).inc()
        return JSONResponse({"error": bad.message}, status_code=bad.status)
    return JSONResponse(
        {
            "model_name": app.model_name,
            "model_version": loaded.version,
            "id": payload.get("id"),
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(probabilities.shape),
                    "data": probabilities.reshape(-1).tolist(),
                }
            ],
        },
        headers={"X-Lepton-Model": f"{app.model_name}/{loaded.version}"},
    )
