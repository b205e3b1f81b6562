"""A LiteRT (TensorFlow Lite) copy of a trained model, so evaluate predicts without TensorFlow.

Importing TensorFlow costs a step process ~9 s here; the LiteRT interpreter (`ai-edge-litert`)
loads in a fraction of a second. Train writes the copy beside the `.keras` file and keeps it
only if it predicts what the Keras model predicts (same classes, probabilities within
`TOLERANCE`) on real examples; evaluate then scores with it, checked against its recorded
sha256, and falls back to the Keras model wherever there is no verified copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lepton_tasks import storage
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
# A registered version's copy, for evaluate to score the champion with (set by register); the
# sha256 must also be its train run's parameter, which nobody can change once logged.
URI_TAG = "lepton.litert_model_uri"
SHA_TAG = "lepton.litert_sha256"
SHA_PARAM = "litert_sha256"


def export_verified(model: Any, uri: str, examples: np.ndarray) -> str | None:
    """Write the model as LiteRT to `uri` if it predicts as the model does; its sha256.

    None (and nothing written) when the export or the check fails: evaluate then uses Keras.
    """
    x = examples[..., np.newaxis] if examples.ndim == 3 else examples
    x = x.astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "model.tflite")
        try:
            model.export(local, format="litert", verbose=False)
            payload = Path(local).read_bytes()
            ours = LiteRTModel(payload).predict(x)
        except Exception as exc:  # an architecture LiteRT cannot take: Keras serves instead
            log.warning("no LiteRT copy of the model: %s: %s", type(exc).__name__, exc)
            return None
    theirs = np.asarray(model.predict(x, verbose=0))
    gap = float(np.abs(ours - theirs).max()) if len(x) else 0.0
    if gap > TOLERANCE or not np.array_equal(ours.argmax(1), theirs.argmax(1)):
        log.warning("no LiteRT copy: it differs from the Keras model by %.2g", gap)
        return None
    storage.write_bytes(uri, payload)
    return hashlib.sha256(payload).hexdigest()


class LiteRTModel:
    """A LiteRT flatbuffer with Keras' `predict(x, batch_size, verbose)`."""

    def __init__(self, payload: bytes) -> None:
        """An interpreter for `payload`, the `.tflite` file's bytes."""
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=payload)
        (self._input,) = self._interpreter.get_input_details()
        (self._output,) = self._interpreter.get_output_details()
        self._batch = -1

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            shape = [batch, *self._input["shape"][1:]]
            self._interpreter.resize_tensor_input(self._input["index"], shape)
            self._interpreter.allocate_tensors()
            self._batch = batch

    def predict(self, x: np.ndarray, batch_size: int = 512, verbose: int = 0) -> np.ndarray:
        """Class probabilities for float32 images (N, H, W, C), `batch_size` at a time."""
        outputs = []
        for start in range(0, len(x), batch_size):
            chunk = np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)
            self._resize(len(chunk))
            self._interpreter.set_tensor(self._input["index"], chunk)
            self._interpreter.invoke()
            outputs.append(np.array(self._interpreter.get_tensor(self._output["index"])))
        if not outputs:
            return np.zeros((0, int(self._output["shape"][-1])), np.float32)
        return np.concatenate(outputs)


def load_verified(uri: str | None, sha256: str | None) -> LiteRTModel | None:
    """The LiteRT copy at `uri` if it is still the one train verified; else None (use Keras).

    Off with LEPTON_LITERT_COPY=false. Whatever goes wrong reading it (a missing file, an
    unknown scheme, no `ai-edge-litert` in a slim image) is a warning and Keras predicts.
    """
    if not uri or not sha256 or not get_settings().litert_copy:
        return None
    try:
        with storage.open_uri(uri, "rb") as handle:
            payload = handle.read()
        if hashlib.sha256(payload).hexdigest() != sha256:
            log.warning("the LiteRT copy %s changed since training: predicting with Keras", uri)
            return None
        return LiteRTModel(payload)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        log.warning("no LiteRT copy from %s (%s): predicting with Keras", uri, exc)
        return None
