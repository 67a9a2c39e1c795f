"""Dashboard metrics: a short training run's gauges reach Ray's Prometheus endpoint."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from reprlab.platform.core.config import load_config
from reprlab.platform.run.driver import run_training

pytestmark = pytest.mark.slow


def _scrape(port: int) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_reprlab_\w+)\{(.*)\} (\S+)$", line)
        if m:
            tags = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            samples[(m.group(1), tags)] = float(m.group(3))
    return samples


def _find(samples, metric: str, **tags) -> list[float]:
    want = set(tags.items())
    return [v for (n, t), v in samples.items() if n == metric and want <= t]


def test_training_metrics_reach_the_prometheus_endpoint(ray_session, tiny, tmp_path):
    from conftest import METRICS_PORT

    cfg = load_config(None, tiny + ["method.name=divide_conquer", "method.num_clusters=2", "scaling.num_workers=2",
                                    "experiment.name=telemetry-test"])
    run_training(cfg, tmp_path / "tele-run")
    base = {"experiment": "telemetry-test", "trial": "tele-run", "method": "divide_conquer"}
    deadline, samples = time.time() + 60, {}
    while time.time() < deadline:  # Ray exports every few seconds
        samples = _scrape(METRICS_PORT)
        if _find(samples, "ray_reprlab_map_at_r", split="test", **base) and _find(samples, "ray_reprlab_method", **base):
            break
        time.sleep(2)
    assert _find(samples, "ray_reprlab_epoch", **base) == [2.0]
    loss = _find(samples, "ray_reprlab_train_loss", **base)
    assert loss and 0 < loss[0] < 5
    assert _find(samples, "ray_reprlab_images_per_second", **base)[0] > 0
    for split in ("val", "test"):
        for name in ("ray_reprlab_recall_at_1", "ray_reprlab_map_at_r"):
            values = _find(samples, name, split=split, **base)
            assert values and 0 <= values[0] <= 1, (name, split)
    sizes = _find(samples, "ray_reprlab_method", name="cluster_size_min", **base)
    assert sizes and sizes[0] >= 1, "D&C's cluster sizes are on the dashboard"
