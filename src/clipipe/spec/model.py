"""The typed model of a command pipeline, as the planner and engine see it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clipipe.errors import Mark

ON_ERROR = ("stop", "continue", "retry")
STEP_TYPES = ("command", "tee", "port-forward", "cleanup", "transfer")
BRANCH_KINDS = ("command", "steps", "checksum", "progress")
BRANCH_POLICIES = ("fail", "drop")
PARAM_TYPES = ("string", "int", "float", "bool", "path", "duration", "list")


@dataclass
class Retry:
    """How a failing step is tried again."""

    count: int = 3
    delay: float = 0.0          #: seconds between tries
    backoff: float = 1.0        #: delay multiplier after each try


@dataclass
class Param:
    """A pipeline parameter: becomes `--NAME` on the command line and `{{.NAME}}` in commands."""

    name: str
    type: str = "string"
    default: Any = None
    required: bool = False
    description: str = ""
    secret: bool = False        #: masked in output and operation records
    choices: list[Any] | None = None
    mark: Mark | None = None


@dataclass
class Branch:
    """One branch of a `type: tee` step."""

    name: str
    kind: str                   #: one of BRANCH_KINDS
    command: str | None = None
    steps: list[Step] = field(default_factory=list)
    output: str | None = None   #: None (shown), "stderr", "variable:NAME", "file:PATH"
    algorithm: str = "sha256"   #: for kind "checksum"
    on_exit: str = "fail"       #: "fail" or "drop" when the branch stops reading early
    size: str | None = None     #: expected stream size for a progress branch (template allowed)
    context: str | None = None
    mark: Mark | None = None


@dataclass
class Step:
    """One step of a pipeline (or of a tee branch's nested `steps:`)."""

    name: str
    type: str = "command"
    command: str | None = None
    context: str | None = None
    depends_on: list[str] = field(default_factory=list)
    input: str | None = None    #: None, "pipe" or a stream NAME
    output: str | None = None   #: None, "stream", "stderr", NAME, "variable:NAME", "file:PATH"
    on_error: str | None = None  #: None = the pipeline's default
    retry: Retry | None = None
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    branches: list[Branch] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  #: type-specific keys (port-forward, ...)
    mark: Mark | None = None
    depends_marks: dict[str, Mark] = field(default_factory=dict)

    @property
    def stops(self) -> list[str]:
        """The step names a `type: cleanup` step stops (its `stop:`, a name or a list)."""
        stop = self.options.get("stop")
        return [str(x) for x in (stop if isinstance(stop, list) else [stop] if stop else [])]

    @property
    def variable(self) -> str | None:
        """The variable this step's stdout is captured into, if any."""
        if self.output and self.output.startswith("variable:"):
            return self.output.split(":", 1)[1]
        return None

    @property
    def stream_name(self) -> str | None:
        """The named stream this step produces (`output: stream` is named after the step)."""
        if self.output == "stream":
            return self.name
        if self.output and ":" not in self.output and self.output not in ("stderr", "stdout"):
            return self.output
        return None


@dataclass
class Pipeline:
    """A whole command pipeline file."""

    name: str
    steps: list[Step]
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""
    version: str = ""
    on_error: str = "stop"
    env: dict[str, str] = field(default_factory=dict)
    context: str | None = None
    path: str = "<command line>"
    mark: Mark | None = None

    def step(self, name: str) -> Step:
        """The top-level step called `name`."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)
