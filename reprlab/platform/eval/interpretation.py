"""Measures of what a representation holds: linear probes, the Frechet distance between two sets
of features, and figures (image grids, response curves) as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
import torch


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of a linear classifier (multinomial logistic regression on standardized inputs)
    fitted on ``train`` and scored on ``test``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def probe_r2(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """R^2 (averaged over target columns) of a linear regression (ridge, small penalty) fitted on
    ``train`` and scored on ``test``."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    reg = make_pipeline(StandardScaler(), Ridge(alpha=1e-3))
    reg.fit(train_x, train_y)
    return float(reg.score(test_x, test_y))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature
    sets (FID's formula, in any feature space)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr (S_a S_b)^(1/2) = tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): a symmetric matrix, eigenvalues >= 0
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross)


# ---------------------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def tile(images: torch.Tensor, rows: int) -> np.ndarray:
    """(rows * cols) x 3 x H x W in [0, 1] -> one H*rows x W*cols x 3 image (1-pixel gaps)."""
    n, c, h, w = images.shape
    cols = n // rows
    pad = torch.ones(n, c, h + 1, w + 1)
    pad[:, :, :h, :w] = images.cpu()
    grid = pad.view(rows, cols, c, h + 1, w + 1).permute(0, 3, 1, 4, 2).reshape(rows * (h + 1), cols * (w + 1), c)
    return grid.numpy()


def grids_png(panels: dict[str, np.ndarray], title: str = "") -> bytes:
    """Image grids side by side, each with its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, img) in zip(axes[0], panels.items()):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def response_png(curves: dict[str, np.ndarray], stds: dict[str, float], ylabel: str) -> bytes:
    """One panel per factor: the network's output (rows: images, columns: re-samples of that
    factor), with the mean standard deviation in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.0), sharey=True, squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(np.arange(values.shape[1]), values.T, marker=".", linewidth=0.8)
        ax.set_title(f"re-sample {name}: std {stds[name]:.2f}", fontsize=9)
        ax.set_xlabel("re-sample")
    axes[0][0].set_ylabel(ylabel)
    return _png(fig)
