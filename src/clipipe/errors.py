"""The one exception tree of clipipe.

    ClipipeError                    base; `exit_code` says what the CLI exits with
    ├── UserError                   bad input: pipeline file, params, CLI args, contexts.yaml (exit 2)
    │   ├── SpecError               a pipeline file is wrong; carries file:line:col
    │   ├── ParamError              a param is missing or has the wrong type
    │   ├── TemplateError           a `{{.x}}` reference that can't be resolved
    │   ├── PlanError               the plan can't be built (cycle, unknown stream, ...)
    │   └── ContextError            contexts.yaml / inventory / `-c` selection is wrong
    ├── TargetError                 a target can't be reached or used (exit 3)
    │   ├── UnreachableError        connection refused, timeout, DNS
    │   ├── AuthError               permission denied
    │   └── HostKeyError            unknown or changed host key
    ├── StepError                   a step failed: exit status, signal, tail of stderr (exit 1)
    ├── AgentError                  the remote agent reported an exception (exit 3)
    ├── RecordError                 a record could not be read, processed or written (exit 1)
    ├── TransferError               a transfer failed: unreadable source, refused write, digests differ (exit 1)
    └── InternalError               a bug in clipipe; the CLI asks for a report (exit 70)

Third-party exceptions are mapped once, at the boundary that calls the library, with `raise ... from exc`.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    """Where something came from: a file and a 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line and self.column:
            return f"{self.file}:{self.line}:{self.column}"
        if self.line:
            return f"{self.file}:{self.line}"
        return self.file


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` to a mistyped `word`, else ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ClipipeError(Exception):
    """Base of every error clipipe raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, mark: Mark | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.mark = mark

    def __str__(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        return f"{where}{self.message}"


class UserError(ClipipeError):
    """Bad input from the user; the CLI prints one line (with file:line:col) and exits 2."""

    exit_code = 2


class SpecError(UserError):
    """A pipeline file is malformed or fails validation."""


class ParamError(UserError):
    """A pipeline param is missing, unknown, or of the wrong type."""


class TemplateError(UserError):
    """A `{{.name}}` reference can't be resolved, or resolves in a loop."""


class PlanError(UserError):
    """The pipeline's steps can't be planned: a cycle, a dangling stream, an impossible wiring."""


class ContextError(UserError):
    """contexts.yaml, an inventory or a `-c` selection is wrong."""


class TargetError(ClipipeError):
    """A target can't be reached or used."""

    exit_code = 3

    def __init__(self, message: str, *, target: str | None = None, hint: str | None = None,
                 mark: Mark | None = None) -> None:
        super().__init__(message, hint=hint, mark=mark)
        self.target = target

    def __str__(self) -> str:
        prefix = f"{self.target}: " if self.target else ""
        return prefix + super().__str__()


class UnreachableError(TargetError):
    """The target did not answer: refused, timed out, no route, unknown host."""


class AuthError(TargetError):
    """The target refused our credentials."""


class HostKeyError(TargetError):
    """The target's host key is unknown or changed."""


class StepError(ClipipeError):
    """A step's process failed."""

    exit_code = 1

    def __init__(self, message: str, *, step: str | None = None, exit_status: int | None = None,
                 signal: int | None = None, stderr_tail: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step = step
        self.exit_status = exit_status
        self.signal = signal
        self.stderr_tail = stderr_tail


class AgentError(ClipipeError):
    """The remote agent reported an exception (its traceback is kept for --debug)."""

    exit_code = 3

    def __init__(self, message: str, *, remote_traceback: str = "", target: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.target = target


class RecordError(ClipipeError):
    """A record source, step or output failed."""

    exit_code = 1


class TransferError(ClipipeError):
    """A `clipipe transfer` (or transfer step) could not copy, verify or rename into place."""

    exit_code = 1


class InternalError(ClipipeError):
    """Something clipipe did not expect: a bug."""

    exit_code = 70
