"""Benchmark :func:`compute_metrics` against PML's ``AccuracyCalculator`` on SOP-shaped data.

Run: ``python -c "from reprlab.bench.eval_bench import bench_eval, format_eval_bench;
print(format_eval_bench(bench_eval()))"``. Defaults are Stanford Online Products' test split
(60,502 images, 11,316 classes of 2-12 images, 128-d embeddings).
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from reprlab.bench.pml_oracle import import_pml, pml_metrics
from reprlab.platform.core.errors import ReprlabError
from reprlab.platform.eval.retrieval import compute_metrics

MIN_PER_CLASS, MAX_PER_CLASS = 2, 12
#: Per-embedding noise norm relative to the (unit) class centre; gives mid-range metrics.
NOISE = 1.4


def class_sizes(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Random class sizes summing to n, each in [2, max(12, ceil(n / classes))], SOP-like."""
    if classes < 1 or n < MIN_PER_CLASS * classes:
        raise ReprlabError(
            f"bench: need at least {MIN_PER_CLASS} images per class, got n={n}, classes={classes}"
        )
    cap = max(MAX_PER_CLASS, -(-n // classes))
    # skewed extras (most classes small, a few large), then trimmed / topped up to sum to n
    p = 1.0 / (1.0 + n / classes - MIN_PER_CLASS)
    extra = np.minimum(rng.geometric(p, size=classes) - 1, cap - MIN_PER_CLASS)
    sizes = MIN_PER_CLASS + extra
    while (gap := n - int(sizes.sum())) != 0:
        room = sizes < cap if gap > 0 else sizes > MIN_PER_CLASS
        pick = rng.choice(np.flatnonzero(room), size=min(abs(gap), int(room.sum())), replace=False)
        sizes[pick] += np.sign(gap)
    return sizes


def synthetic_embeddings(
    n: int, dim: int, classes: int, seed: int = 0, noise: float = NOISE
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 embeddings: random unit class centres plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(n, classes, rng))
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm]), labels[perm]


def _timed(fn, *args, **kwargs) -> tuple[dict[str, float], float]:
    """fn's result and its wall time in seconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_eval(
    n: int = 60502, dim: int = 128, classes: int = 11316, seed: int = 0
) -> dict[str, Any]:
    """Time ours and PML's metrics on the same synthetic embeddings, and compare the values."""
    import_pml()  # fail early, with install advice, if PML is missing
    x, y = synthetic_embeddings(n, dim, classes, seed)
    ours, ours_s = _timed(compute_metrics, x, y)
    pml, pml_s = _timed(pml_metrics, x, y)
    diffs = {key: abs(ours[key] - pml[key]) for key in ours}
    worst = max(diffs, key=diffs.get)
    gpu: dict[str, Any] = {}
    if faiss.get_num_gpus() > 0:  # ours above ran on the GPU: the same on the CPU, side by side
        cpu, cpu_s = _timed(compute_metrics, x, y, use_gpu=False)
        gpu = {"gpus": faiss.get_num_gpus(), "cpu_s": cpu_s, "gpu_speedup": cpu_s / ours_s,
               "gpu_cpu_max_abs_diff": max(abs(ours[k] - cpu[k]) for k in ours)}
    return {
        "n": n, "dim": dim, "classes": classes, "seed": seed,
        "threads": faiss.omp_get_max_threads(),
        "ours_s": ours_s, "pml_s": pml_s, "speedup": pml_s / ours_s,
        "ours": ours, "pml": pml,
        "max_abs_diff": diffs[worst], "max_abs_diff_key": worst,
        **gpu,
    }


def format_eval_bench(result: dict[str, Any]) -> str:
    """A small table: one row per metric (ours, PML, |diff|), then the timings."""
    head = (
        f"eval bench: n={result['n']} dim={result['dim']} classes={result['classes']} "
        f"seed={result['seed']} faiss threads={result['threads']}"
    )
    rows = [head, f"{'metric':<10} {'ours':>10} {'pml':>10} {'|diff|':>10}"]
    for key, value in result["ours"].items():
        pml = result["pml"][key]
        rows.append(f"{key:<10} {value:>10.6f} {pml:>10.6f} {abs(value - pml):>10.2e}")
    rows.append(f"max |diff| = {result['max_abs_diff']:.2e} ({result['max_abs_diff_key']})")
    rows.append(
        f"time: ours {result['ours_s']:.2f} s, PML {result['pml_s']:.2f} s, "
        f"PML/ours = {result['speedup']:.2f}x"
    )
    if "gpu_speedup" in result:
        rows.append(
            f"faiss on {result['gpus']} GPU(s) vs CPU: ours {result['ours_s']:.2f} s vs {result['cpu_s']:.2f} s, "
            f"CPU/GPU = {result['gpu_speedup']:.2f}x, max |diff| {result['gpu_cpu_max_abs_diff']:.2e}"
        )
    else:
        rows.append("no GPU seen by faiss: the GPU vs CPU comparison runs where one is")
    return "\n".join(rows)
