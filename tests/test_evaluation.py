"""Metrics: hand-computed cases, equality with PML's AccuracyCalculator, bench structure."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from reprlab.platform.eval import retrieval as evaluation
from reprlab.bench.eval_bench import (
    bench_eval,
    class_sizes,
    format_eval_bench,
    synthetic_embeddings,
)
from reprlab.platform.core.errors import ReprlabError
from reprlab.platform.eval.retrieval import METRIC_KEYS, compute_metrics, nmi, pairwise_f1

pytest.importorskip("pytorch_metric_learning")
from reprlab.bench.pml_oracle import pml_metrics  # noqa: E402


def assert_same(ours: dict[str, float], ref: dict[str, float]) -> None:
    """Same keys; equal within 1e-6 (1e-4 for NMI)."""
    assert list(ours) == list(ref)
    for key in ours:
        tol = 1e-4 if key == "nmi" else 1e-6
        assert ours[key] == pytest.approx(ref[key], abs=tol), key


def line_points() -> tuple[np.ndarray, np.ndarray]:
    """Six points on a line: positions 0 1 3 10 11 15, labels A A B B A B."""
    x = np.array([0, 1, 3, 10, 11, 15], dtype=np.float32)[:, None]
    return x, np.array([0, 0, 1, 1, 0, 1])


# --- hand-computed -------------------------------------------------------------------------


def test_line_by_hand() -> None:
    # neighbours (self excluded): 0:[1,2,3,..] 1:[0,2,..] 2:[1,0,3,..] 3:[4,5,2,..]
    # 4:[3,5,2,1] 5:[4,3,..]
    # hits@1: 0,1 -> 2/6; hits@2 adds 3,5 -> 4/6; hits@4 adds 2,4 -> 6/6
    # R = 2 for all; AP@R: 0:1/2, 1:1/2, 2:0, 3:(1/2)/2, 4:0, 5:(1/2)/2 -> mean 1.5/6
    x, y = line_points()
    m = compute_metrics(x, y, ks=(1, 2, 4))
    assert list(m) == ["recall@1", "recall@2", "recall@4", "nmi", "f1", "p@1", "map@r"]
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["p@1"] == pytest.approx(1 / 3)
    assert m["map@r"] == pytest.approx(0.25)


def test_default_keys_and_range() -> None:
    x, y = synthetic_embeddings(300, 8, 40, seed=1)
    m = compute_metrics(x, y)
    assert tuple(m) == METRIC_KEYS
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_perfect_clustering() -> None:
    x = np.array([[0, 0], [0, 1], [1, 0], [100, 100], [100, 101], [101, 100]], dtype=np.float32)
    y = np.array([7, 7, 7, 3, 3, 3])
    m = compute_metrics(x, y)
    assert m["nmi"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
    assert m["recall@1"] == m["p@1"] == m["map@r"] == 1.0


def test_nmi_f1_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    assert nmi(y, np.array([5, 5, 2, 2])) == pytest.approx(1.0)
    assert pairwise_f1(y, np.array([5, 5, 2, 2])) == pytest.approx(1.0)
    assert nmi(np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3])) == 0.0
    # one cluster: 6 pairs together, 2 of them same-class -> P = 1/3, R = 1, F1 = 1/2
    assert pairwise_f1(y, np.zeros(4, dtype=int)) == pytest.approx(0.5)


def test_lone_queries_are_skipped() -> None:
    x, y = line_points()
    x = np.concatenate([x, [[5.0]]]).astype(np.float32)
    y = np.concatenate([y, [9]])  # a class of one: no relevant item, not counted
    m = compute_metrics(x, y, ks=(1, 2, 4))
    assert m["p@1"] == pytest.approx(1 / 3) and m["map@r"] == pytest.approx(0.25)


def test_self_removed_by_index_not_position() -> None:
    # rows 0 and 1 are identical: faiss may list 1 before 0 for query 0
    neighbours = np.array([[1, 0, 2], [0, 1, 2], [0, 1, 3], [0, 1, 2]])
    out = evaluation._drop_self(neighbours)
    np.testing.assert_array_equal(out, [[1, 2], [0, 2], [0, 1], [0, 1]])


# --- equality with PML ----------------------------------------------------------------------


def test_matches_pml_random_gaussian() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((800, 16)).astype(np.float32)
    y = rng.integers(0, 120, 800)
    y[:3] = [1000, 1001, 1002]  # lone queries
    assert_same(compute_metrics(x, y), pml_metrics(x, y))


def test_matches_pml_trained_like() -> None:
    x, y = synthetic_embeddings(1500, 32, 250, seed=3, noise=0.6)
    ours = compute_metrics(x, y)
    assert ours["recall@1"] > 0.9 and ours["nmi"] > 0.9
    assert_same(ours, pml_metrics(x, y))


def test_matches_pml_with_duplicates() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    x[150:] = x[:150]  # exact ties everywhere
    y = rng.integers(0, 30, 300)
    assert_same(compute_metrics(x, y), pml_metrics(x, y))


def test_matches_pml_query_gallery() -> None:
    x, y = synthetic_embeddings(1200, 16, 200, seed=5, noise=1.2)
    query, gallery = np.arange(1200) % 3 == 0, np.arange(1200) % 3 != 0
    gallery &= y != 7  # class 7's queries have nothing to retrieve
    args = (x[query], y[query], x[gallery], y[gallery])
    assert_same(compute_metrics(*args, ks=(1, 10, 20)), pml_metrics(*args, ks=(1, 10, 20)))


def test_f1_matches_sklearn_pair_confusion() -> None:
    from sklearn.metrics.cluster import pair_confusion_matrix

    rng = np.random.default_rng(2)
    for n, k_true, k_pred in [(50, 5, 7), (400, 60, 40), (1000, 3, 300)]:
        y, c = rng.integers(0, k_true, n), rng.integers(0, k_pred, n) * 13 - 5
        (_, fp), (fn, tp) = pair_confusion_matrix(y, c)
        expected = 2 * tp / (2 * tp + fp + fn)
        assert pairwise_f1(y, c) == pytest.approx(expected, abs=1e-12)


def test_nmi_matches_sklearn() -> None:
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(4)
    y, c = rng.integers(0, 30, 500), rng.integers(0, 25, 500)
    assert nmi(y, c) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-12)


# --- implementation properties --------------------------------------------------------------


@pytest.mark.parametrize("with_gallery", [False, True])
def test_knn_computed_once(monkeypatch: pytest.MonkeyPatch, with_gallery: bool) -> None:
    calls = []
    real = evaluation.knn_search

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "knn_search", counting)
    x, y = synthetic_embeddings(400, 8, 50, seed=2)  # classes of up to 12: k = max R = 11 or more
    args = (x[:100], y[:100], x[100:], y[100:]) if with_gallery else (x, y)
    compute_metrics(*args)
    assert len(calls) == 1 and calls[0] >= 8


def test_search_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = synthetic_embeddings(500, 8, 60, seed=6)
    expected = compute_metrics(x, y)
    monkeypatch.setattr(evaluation, "SEARCH_CHUNK", 64)
    assert compute_metrics(x, y) == expected


def test_use_gpu_without_gpu_falls_back() -> None:
    x, y = synthetic_embeddings(200, 8, 30, seed=7)
    assert compute_metrics(x, y, use_gpu=True) == compute_metrics(x, y, use_gpu=False)


def test_bad_inputs() -> None:
    x, y = line_points()
    with pytest.raises(ReprlabError, match="labels"):
        compute_metrics(x, y[:-1])
    with pytest.raises(ReprlabError, match="NaN"):
        compute_metrics(np.full_like(x, np.nan), y)
    with pytest.raises(ReprlabError, match="dim"):
        compute_metrics(x, y, np.zeros((6, 2), np.float32), y)
    with pytest.raises(ReprlabError, match="ks"):
        compute_metrics(x, y, ks=(0,))


# --- bench ----------------------------------------------------------------------------------


def test_class_sizes_sop_like() -> None:
    sizes = class_sizes(60502, 11316, np.random.default_rng(0))
    assert sizes.sum() == 60502 and sizes.min() >= 2 and sizes.max() <= 12


def test_bench_small() -> None:
    result = bench_eval(n=600, dim=16, classes=100)
    assert {"ours_s", "pml_s", "speedup", "ours", "pml", "max_abs_diff"} <= set(result)
    assert tuple(result["ours"]) == tuple(result["pml"]) == METRIC_KEYS
    assert result["speedup"] == pytest.approx(result["pml_s"] / result["ours_s"])
    assert_same(result["ours"], result["pml"])
    assert result["max_abs_diff"] < 1e-4
    table = format_eval_bench(result)
    assert "recall@8" in table and "PML/ours" in table
    import faiss

    if faiss.get_num_gpus() > 0:  # faiss on the GPU vs on the CPU: the same metrics
        assert result["gpu_cpu_max_abs_diff"] < 1e-4 and "CPU/GPU" in table
    else:
        assert "gpu_speedup" not in result and "no GPU seen by faiss" in table


def test_bench_without_pml(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("pytorch_metric_learning")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)
    with pytest.raises(ReprlabError, match="pytorch-metric-learning is not installed"):
        bench_eval(n=60, dim=4, classes=10)
