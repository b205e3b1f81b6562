"""Named failures and their exit codes.

Every foreseeable failure is a `LeptonError` subclass with its own exit code, so a caller
(Airflow, a shell script, a container runtime) can tell bad data from a broken tracking server
without parsing text. The CLI prints one line per failure; tracebacks only with `--debug`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

# What an orchestrator does with a failed step: try again later, fail at once, or skip the run.
FailureAction = Literal["retry", "fail", "skip"]


class LeptonError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1
    # Declared per class: the one exit-code policy every runtime applies (`failure_action`).
    on_failure: ClassVar[FailureAction] = "retry"

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def one_line(self) -> str:
        """`<ErrorName>: <message> (<where>)` on one line, credentials in URLs redacted."""
        from lepton_tasks.redact import redact

        where = f" ({self.where})" if self.where else ""
        return redact(f"{type(self).__name__}: {self.message}{where}".replace("\n", " "))


class UsageError(LeptonError):
    """A flag value or combination that cannot work (unknown model name, bad fraction...)."""

    exit_code = 2
    on_failure = "fail"


class InputDataError(LeptonError):
    """The source cannot be read as a dataset: missing, corrupt, malformed or inconsistent."""

    exit_code = 3
    on_failure = "fail"
    # Set when the bad data is one batch of a landing zone, so that batch can be quarantined.
    batch_uri: str | None = None


class UnknownSourceError(InputDataError):
    """The source URI or format is not one Lepton can read."""

    exit_code = 4


class DataValidationError(LeptonError):
    """The snapshot was read fine but failed its data-quality expectations."""

    exit_code = 5
    on_failure = "fail"

    def __init__(
        self, message: str, *, failures: list[dict] | None = None, where: str | None = None
    ):
        super().__init__(message, where=where)
        self.failures = failures or []


class ClassSetError(DataValidationError):
    """The data's classes are not the champion's: a new class, or one missing."""

    exit_code = 13


class UpstreamMissingError(LeptonError):
    """A step's input from an earlier step is missing from the run folder."""

    exit_code = 6
    on_failure = "fail"


class TrackingUnavailableError(LeptonError):
    """The MLflow tracking server or registry cannot be reached."""

    exit_code = 7
    on_failure = "retry"


class TrackingAccessDeniedError(TrackingUnavailableError):
    """MLflow refused the signed-in user (401/403): credentials or permissions, not an outage."""

    exit_code = 11
    on_failure = "fail"


class TrainingError(LeptonError):
    """Training ran but produced no usable model (for example a NaN loss)."""

    exit_code = 8
    on_failure = "fail"


class RegistryError(LeptonError):
    """The model registry refused an operation (unknown version, missing alias...)."""

    exit_code = 9
    on_failure = "retry"


class ChampionMovedError(RegistryError):
    """The champion is no longer the version a decision was made against (a rollback or
    another run moved it in between): nothing was moved; decide again."""

    exit_code = 12
    on_failure = "fail"


class NothingToIngestError(LeptonError):
    """The landing zone holds no batch yet: nothing to train on. A skip, not a failure."""

    exit_code = 10
    on_failure = "skip"


ERROR_CLASSES: tuple[type[LeptonError], ...] = (
    UsageError,
    InputDataError,
    UnknownSourceError,
    DataValidationError,
    UpstreamMissingError,
    TrackingUnavailableError,
    TrainingError,
    RegistryError,
    NothingToIngestError,
    TrackingAccessDeniedError,
    ChampionMovedError,
    ClassSetError,
)
EXIT_CODES: dict[str, int] = {cls.__name__: cls.exit_code for cls in ERROR_CLASSES}
_ACTIONS: dict[int, FailureAction] = {cls.exit_code: cls.on_failure for cls in ERROR_CLASSES}


def failure_action(exit_code: int) -> FailureAction:
    """What to do when a step exits with `exit_code` (non-zero), in every runtime.

    Codes of the named errors follow their class; anything else (1: a bug, 137: killed for
    memory, 143: terminated) may be transient and is retried.
    """
    return _ACTIONS.get(exit_code, "retry")
