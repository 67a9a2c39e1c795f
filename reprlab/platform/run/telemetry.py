"""Live metrics for the Ray dashboard (Prometheus export) through ``ray.util.metrics``.

Rank 0 of a run sets gauges tagged with the experiment, the trial (a Tune trial id, or the run
directory's name) and the method: training loss and images per second while training; epoch and
validation/test R@1 and MAP@R after each epoch; and whatever the method logs per step or per
epoch (``method`` gauge, tagged with the log's name: D&C's cluster sizes, MIC's adversarial loss,
...). Ray exports them with a ``ray_`` prefix on the metrics export port of every node.
"""

from __future__ import annotations

import re
from typing import Any

TAGS = ("experiment", "trial", "method")


class Telemetry:
    """No-op unless Ray is initialized in this process (in-process runs without Ray skip it)."""

    def __init__(self, experiment: str, trial: str, method: str, enabled: bool = True) -> None:
        import ray

        self.enabled = enabled and ray.is_initialized()
        self.tags = {"experiment": experiment, "trial": trial, "method": method}
        self._gauges: dict[str, Any] = {}

    def _gauge(self, name: str, description: str, extra: tuple[str, ...] = ()):
        if name not in self._gauges:
            from ray.util.metrics import Gauge

            self._gauges[name] = Gauge(name, description=description, tag_keys=TAGS + extra)
        return self._gauges[name]

    def progress(self, loss: float, images_per_s: float) -> None:
        """During an epoch: the running mean loss and throughput."""
        if not self.enabled:
            return
        self._gauge("reprlab_train_loss", "training loss (running mean over the epoch)").set(loss, tags=self.tags)
        self._gauge("reprlab_images_per_second", "training images per second, all workers").set(images_per_s, tags=self.tags)

    def epoch(self, row: dict[str, float]) -> None:
        """After an epoch: its row of the metrics table."""
        if not self.enabled:
            return
        self._gauge("reprlab_epoch", "epochs completed").set(row["epoch"], tags=self.tags)
        if row.get("throughput/images_per_s"):
            self._gauge("reprlab_images_per_second", "training images per second, all workers").set(
                row["throughput/images_per_s"], tags=self.tags)
        for split in ("val", "test"):
            for key, name in (("recall@1", "reprlab_recall_at_1"), ("map@r", "reprlab_map_at_r")):
                value = row.get(f"{split}/{key}")
                if value is not None:
                    self._gauge(name, f"{key} on an evaluation split", ("split",)).set(
                        value, tags={**self.tags, "split": split})
        for key, value in row.items():
            if key == "train/loss":
                self._gauge("reprlab_train_loss", "training loss (running mean over the epoch)").set(value, tags=self.tags)
            elif key.startswith(("train/", "method/")) and value is not None:
                self._gauge("reprlab_method", "method-specific values (tag name)", ("name",)).set(
                    value, tags={**self.tags, "name": re.sub(r"[^A-Za-z0-9_]+", "_", key.split("/", 1)[1])})
