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
    assert not small.promote and "needed more than +0.0050" in small.reason
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
    assert not params.decide({"accuracy": 0.95}, {"accuracy": 0.95}).promote  # ties never do
    monkeypatch.setenv("LEPTON_PROMOTION_METRIC", "loss")
    get_settings.cache_clear()
    with pytest.raises(UsageError, match="LEPTON_PROMOTION_METRIC"):
        EvaluateParams.with_defaults()


def paired(n_right_both: int, only_candidate: int, only_champion: int, n_wrong_both: int):
    """Test labels and two models' predictions with the given agreement counts (class 0/1)."""
    n = n_right_both + only_candidate + only_champion + n_wrong_both
    y = np.arange(n) % 2
    wrong = 1 - y
    candidate = np.concatenate(
        [y[: n_right_both + only_candidate], wrong[n_right_both + only_candidate :]]
    )
    champion = np.concatenate(
        [
            y[:n_right_both],
            wrong[n_right_both : n_right_both + only_candidate],
            y[n_right_both + only_candidate : n - n_wrong_both],
            wrong[n - n_wrong_both :],
        ]
    )
    return y, candidate, champion


def gate(y, candidate, champion, min_improvement=0.0):
    from lepton_tasks.steps.evaluate import gate_evidence, metric_value

    evidence = gate_evidence(
        y,
        candidate,
        champion,
        ["0", "1"],
        "accuracy",
        confidence=0.95,
        samples=2000,
        max_recall_drop=0.05,
    )
    scores = [{"accuracy": metric_value(y, p, 2, "accuracy")} for p in (candidate, champion)]
    return decide(scores[0], scores[1], "accuracy", min_improvement, 0.5, None, evidence)


def test_a_gain_within_noise_is_not_promoted_a_clear_one_is() -> None:
    noise = gate(*paired(350, 6, 4, 40))  # +2 examples of 400: +0.5 points
    assert not noise.promote
    low, high = noise.evidence.gain_interval
    assert low < 0 < high and "lower bound" in noise.reason
    clear = gate(*paired(330, 40, 5, 25))  # +35 of 400
    assert clear.promote and clear.evidence.gain_interval[0] > 0.05


def test_a_model_better_on_average_but_collapsing_on_one_class_is_not_promoted() -> None:
    y = np.arange(400) % 2
    champion = y.copy()
    champion[:100] = 1 - y[:100]  # champion: 75 % right, errors spread over both classes
    candidate = y.copy()
    candidate[(y == 1) & (np.arange(400) < 160)] = 0  # candidate: 80 % right, class 1 hit hard
    decision = gate(y, candidate, champion)
    assert decision.evidence.gain > 0
    assert decision.evidence.regressed_classes == ["1"] and not decision.promote
    assert "recall regressed on class(es) 1" in decision.reason


def test_identical_predictions_never_promote() -> None:
    y = np.arange(200) % 2
    decision = gate(y, y.copy(), y.copy())
    assert decision.evidence.gain_interval == (0.0, 0.0) and not decision.promote
