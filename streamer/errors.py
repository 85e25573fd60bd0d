"""Error kinds. Each carries a one-line message and a hint saying what to do; the CLI prints both."""

from __future__ import annotations


class StreamerError(Exception):
    """Base of every error the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(StreamerError):
    """A setting, flag or config file is wrong."""


class SourceError(StreamerError):
    """The input (file, camera, stream, image) cannot be read."""


class ModelError(StreamerError):
    """The model cannot be built or its weights cannot be found or loaded."""


class SinkError(StreamerError):
    """An output cannot be written."""


class PipelineError(StreamerError):
    """A pipeline stage failed; `stage` names it and `cause` is the original exception."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        inner = cause.message if isinstance(cause, StreamerError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{stage} failed: {inner}", getattr(cause, "hint", None))
        self.stage = stage
        self.cause = cause


class Interrupted(StreamerError):
    """The run was stopped by SIGINT/SIGTERM; outputs were finalised."""

    exit_code = 130


class StopRequested(Exception):
    """Raised by a sink (e.g. the preview's quit key) to end the run normally."""
