"""The tracker interface the engine talks to. This base class tracks nothing (`--tracking none`).

The local run record (config.yaml, metrics.csv, results.json, figures) is written by the
engine whatever the tracker, so turning tracking off never loses a result.
"""

from __future__ import annotations

from pathlib import Path


class Tracker:
    backend = "none"
    mode = "off"
    key: str | None = None
    url: str | None = None

    def log_parameters(self, params: dict) -> None: ...

    def log_others(self, values: dict) -> None: ...

    def log_text(self, name: str, text: str) -> None: ...

    def log_metrics(self, metrics: dict, step: int | None = None, epoch: int | None = None) -> None: ...

    def log_confusion_matrix(self, matrix: list, labels: list[str], title: str) -> None: ...

    def log_image(self, path: Path, name: str) -> None: ...

    def log_model(self, name: str, path: Path) -> None: ...

    def register_model(self, name: str, version: str, status: str, description: str, tags: list[str]) -> bool:
        """Register a model logged in this experiment in the tracker's model registry; False: not done."""
        return False

    def add_tags(self, tags: list[str]) -> None: ...

    def log_event(self, name: str, message: str, data: dict | None = None) -> None: ...

    def end(self) -> None: ...

    def record(self) -> dict:
        """What the run record (results.json) stores about this tracker."""
        return {"backend": self.backend, "mode": self.mode, "key": self.key, "url": self.url}
