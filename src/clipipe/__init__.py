"""clipipe: YAML pipelines of shell and record steps, locally, over SSH and in Kubernetes pods."""
from __future__ import annotations

__version__ = "0.1.0"
