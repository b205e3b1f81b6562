"""Evaluate's metrics and promotion gate, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_tasks.errors import UsageError
from lepton_tasks.steps.evaluate import classification_metrics, decide


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    metrics, matrix = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["precision_a"] == pytest.approx(2 / 3)
    assert metrics["recall_a"] == pytest.approx(2 / 3)
    assert metrics["precision_b"] == pytest.approx(2 / 3)
    assert metrics["recall_b"] == pytest.approx(1.0)
    assert metrics["recall_c"] == 0.0
    f1 = [2 / 3, 0.8, 0.0]
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_gate_promotes_the_first_model_above_the_floor_only() -> None:
    assert decide({"accuracy": 0.9}, None, "accuracy", 0.0, 0.8, None).promote
    low = decide({"accuracy": 0.7}, None, "accuracy", 0.0, 0.8, None)
    assert not low.promote and "below the floor 0.8000" in low.reason


def test_gate_needs_the_configured_improvement_over_the_champion() -> None:
    champion = {"accuracy": 0.95}
    assert decide({"accuracy": 0.96}, champion, "accuracy", 0.005, 0.8, None).promote
    small = decide({"accuracy": 0.952}, champion, "accuracy", 0.005, 0.8, None)
    assert not small.promote and "needed +0.0050" in small.reason
    worse = decide({"accuracy": 0.90}, champion, "accuracy", 0.0, 0.8, None)
    assert not worse.promote and worse.champion_value == 0.95


def test_forced_promotion_records_the_reason() -> None:
    forced = decide({"accuracy": 0.5}, {"accuracy": 0.9}, "accuracy", 0.0, 0.8, "hotfix #12")
    assert forced.promote and forced.forced and forced.reason == "forced: hotfix #12"


def test_evaluate_params_take_the_settings_for_what_is_not_given(
    lepton_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lepton_tasks.settings import get_settings
    from lepton_tasks.steps.evaluate import EvaluateParams

    monkeypatch.setenv("LEPTON_ACCURACY_FLOOR", "0.9")
    get_settings.cache_clear()
    params = EvaluateParams.with_defaults(model_name="digits", min_improvement=None)
    assert (params.model_name, params.floor, params.min_improvement) == ("digits", 0.9, 0.0)
    assert not params.decide({"accuracy": 0.85}, None).promote  # below the floor
    assert params.decide({"accuracy": 0.95}, {"accuracy": 0.95}).promote  # a tie promotes
    monkeypatch.setenv("LEPTON_PROMOTION_METRIC", "loss")
    get_settings.cache_clear()
    with pytest.raises(UsageError, match="LEPTON_PROMOTION_METRIC"):
        EvaluateParams.with_defaults()
