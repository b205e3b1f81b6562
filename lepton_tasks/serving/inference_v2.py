"""The Open Inference Protocol v2 (KServe, Triton, MLServer): model metadata and `infer`."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_tasks.serving.app import BadRequest, images_from

if TYPE_CHECKING:
    from lepton_tasks.serving.app import ServingApp

DATATYPES = {"FP32", "FP64", "FP16", "UINT8", "UINT16", "INT8", "INT16", "INT32", "INT64"}


def _not_found(app: ServingApp, name: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": f"no model '{name}' here; this serves '{app.model_name}'"}, 404)


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
    if not isinstance(declared, list) or not all(isinstance(d, int) and d >= 0 for d in declared):
        raise BadRequest("'shape' must be a list of sizes", "shape")
    try:
        flat = np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1)
    except (ValueError, TypeError):
        raise BadRequest("'data' must be an array of numbers", "not_numbers") from None
    if int(np.prod(declared)) != flat.size:
        raise BadRequest(f"'shape' {declared} does not hold the {flat.size} values sent", "shape")
    return images_from(flat.reshape(declared), shape)


async def infer(app: ServingApp, request: Any) -> Any:
    from starlette.responses import JSONResponse

    if request.path_params["model"] != app.model_name:
        return _not_found(app, request.path_params["model"])
    loaded = app.current
    try:
        if loaded is None:
            raise BadRequest("no champion loaded yet", "not_ready", status=503)
        try:
            payload = json.loads(await app._body(request))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}", "not_json") from None
        images = _tensor(payload, loaded.input_shape)
        probabilities = await asyncio.to_thread(app._predict, loaded, images)
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
