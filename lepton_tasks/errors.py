"""Named failures and their exit codes.

Every foreseeable failure is a `LeptonError` subclass with its own exit code, so a caller
(Airflow, a shell script, a container runtime) can tell bad data from a broken tracking server
without parsing text. The CLI prints one line per failure; tracebacks only with `--debug`.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def one_line(self) -> str:
        where = f" ({self.where})" if self.where else ""
        return f"{type(self).__name__}: {self.message}{where}".replace("\n", " ")


class UsageError(LeptonError):
    """A flag value or combination that cannot work (unknown model name, bad fraction...)."""

    exit_code = 2


class InputDataError(LeptonError):
    """The source cannot be read as a dataset: missing, corrupt, malformed or inconsistent."""

    exit_code = 3
    # Set when the bad data is one batch of a landing zone, so that batch can be quarantined.
    batch_uri: str | None = None


class UnknownSourceError(InputDataError):
    """The source URI or format is not one Lepton can read."""

    exit_code = 4


class DataValidationError(LeptonError):
    """The snapshot was read fine but failed its data-quality expectations."""

    exit_code = 5

    def __init__(
        self, message: str, *, failures: list[dict] | None = None, where: str | None = None
    ):
        super().__init__(message, where=where)
        self.failures = failures or []


class UpstreamMissingError(LeptonError):
    """A step's input from an earlier step is missing from the run folder."""

    exit_code = 6


class TrackingUnavailableError(LeptonError):
    """The MLflow tracking server or registry cannot be reached."""

    exit_code = 7


class TrainingError(LeptonError):
    """Training ran but produced no usable model (for example a NaN loss)."""

    exit_code = 8


class RegistryError(LeptonError):
    """The model registry refused an operation (unknown version, missing alias...)."""

    exit_code = 9


class NothingToIngestError(LeptonError):
    """The landing zone holds no batch yet: nothing to train on. A skip, not a failure."""

    exit_code = 10


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        UsageError,
        InputDataError,
        UnknownSourceError,
        DataValidationError,
        UpstreamMissingError,
        TrackingUnavailableError,
        TrainingError,
        RegistryError,
        NothingToIngestError,
    )
}
