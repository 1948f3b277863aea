"""The Kubernetes target: settings only for now, so contexts.yaml with `type: kubernetes` loads.

Running segments in pods (exec websocket, the agent over `v5.channel.k8s.io`) comes later; opening
such a target raises a TargetError that says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clipipe.errors import TargetError
from clipipe.targets.base import ConnectInfo, ProcOutcome, ProcSpec, SegmentIO, register

NOT_IMPLEMENTED = "kubernetes targets are not implemented yet"


def _d(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class KubernetesSettings:
    """Settings of a `type: kubernetes` context."""

    context: str | None = field(default=None, metadata=_d("kubeconfig context (default: current)"))
    namespace: str = field(default="default", metadata=_d("namespace of the pod"))
    pod: str | None = field(default=None, metadata=_d("pod name (or use `selector`)"))
    selector: str | None = field(default=None, metadata=_d("label selector picking the pod(s)"))
    container: str | None = field(default=None, metadata=_d("container in the pod (default: first)"))
    kubeconfig: str | None = field(default=None, metadata=_d("kubeconfig path (default: $KUBECONFIG, ~/.kube/config)"))
    python: str = field(default="python3", metadata=_d("python on the pod that runs the agent"))


@register("kubernetes", KubernetesSettings)
class KubernetesTarget:
    """Placeholder: registered so contexts load; every use raises TargetError."""

    kind = "kubernetes"

    def __init__(self, name: str, settings: KubernetesSettings) -> None:
        self.name = name
        self.settings = settings
        self.info = ConnectInfo(transport="kubernetes")

    async def open(self) -> None:
        """Not implemented yet: raises TargetError."""
        raise TargetError(NOT_IMPLEMENTED, target=self.name)

    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Not implemented yet: closes the fds it was given and raises TargetError."""
        io.close()
        raise TargetError(NOT_IMPLEMENTED, target=self.name)

    async def close(self) -> None:
        """Nothing to release."""

    def describe(self) -> dict[str, Any]:
        """Settings and the fact that this target type is not implemented yet."""
        s = self.settings
        return {"name": self.name, "type": self.kind, "context": s.context, "namespace": s.namespace,
                "pod": s.pod, "selector": s.selector, "container": s.container,
                "status": NOT_IMPLEMENTED}
