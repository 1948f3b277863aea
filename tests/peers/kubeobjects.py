"""The stand-in's API objects: v1 Pods and Services as JSON, metav1.Status, label selectors."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pod:
    """A pod of the stand-in: commands exec'd in it run as local processes in its directory."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    phase: str = "Running"
    containers: list[str] = field(default_factory=lambda: ["app"])
    python: bool = True                         #: False: exec of python* fails like a slim image
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)  #: pod port -> local TCP address
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        """The v1 Pod object."""
        running = self.phase == "Running"
        return {
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels),
                         "uid": self.uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": c, "image": "standin:1"} for c in self.containers]},
            "status": {"phase": self.phase, "containerStatuses": [
                {"name": c, "ready": running, "restartCount": 0, "image": "standin:1", "imageID": "",
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if running
                 else {"waiting": {"reason": "ContainerCreating"}}} for c in self.containers]},
        }


@dataclass
class Service:
    """A v1 Service: a selector and port -> targetPort mappings."""

    name: str
    selector: dict[str, str]
    ports: dict[int, int | str]                 #: service port -> targetPort
    namespace: str = "default"

    def to_json(self) -> dict[str, Any]:
        """The v1 Service object."""
        return {"kind": "Service", "apiVersion": "v1",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"selector": dict(self.selector),
                         "ports": [{"port": p, "targetPort": t, "protocol": "TCP"} for p, t in self.ports.items()]}}


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A metav1.Status."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def parse_selector(text: str) -> list[tuple[str, str, list[str]]]:
    """A label selector -> [(key, op, values)]; ops: =, !=, in, notin, exists, !exists."""
    out: list[tuple[str, str, list[str]]] = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", part)
        if m:
            out.append((m[1], m[2], [v.strip() for v in m[3].split(",") if v.strip()]))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", [v.strip()]))
        elif "=" in part:
            k, v = part.replace("==", "=").split("=", 1)
            out.append((k.strip(), "=", [v.strip()]))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!exists", []))
        elif re.match(r"^[\w./-]+$", part):
            out.append((part, "exists", []))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return out


def matches(labels: dict[str, str], selector: list[tuple[str, str, list[str]]]) -> bool:
    """True when `labels` satisfy every requirement."""
    for key, op, values in selector:
        have = labels.get(key)
        ok = {"=": have == (values[0] if values else None), "!=": have != (values[0] if values else None),
              "in": have in values, "notin": have not in values, "exists": key in labels,
              "!exists": key not in labels}[op]
        if not ok:
            return False
    return True
