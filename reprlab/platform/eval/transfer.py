"""Measures and figures of appearance / pose transfer (disentangling): per-example transfer errors,
their summary, and PNG figures (the transfer grid, controller curves, a violin plot of errors)."""

from __future__ import annotations

import io

import numpy as np
import torch


def per_example_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each example (N x ...), over all its pixels and channels."""
    return (output.float() - target.float()).square().flatten(1).mean(1)


def to_unit(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    x = torch.as_tensor(np.asarray(pixels))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def transfer_grid_png(app: np.ndarray, pose: np.ndarray, output: np.ndarray, truth: np.ndarray | None,
                      title: str = "") -> bytes:
    """Appearance images down the side, pose images along the top, the transferred outputs (rows:
    appearance, columns: pose) and beside them the ground truth. Images H x W x 3 in [0, 1];
    ``output`` / ``truth``: R x C x H x W x 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, c, h, w, _ = output.shape

    def mosaic(grid: np.ndarray) -> np.ndarray:
        canvas = np.ones(((r + 1) * (h + 1), (c + 1) * (w + 1), 3))
        for j in range(c):
            canvas[: h, (j + 1) * (w + 1) : (j + 1) * (w + 1) + w] = pose[j]
        for i in range(r):
            y = (i + 1) * (h + 1)
            canvas[y : y + h, :w] = app[i]
            for j in range(c):
                canvas[y : y + h, (j + 1) * (w + 1) : (j + 1) * (w + 1) + w] = grid[i, j]
        return canvas

    panels = {"output D(pi(pose), alpha(appearance))": mosaic(output)}
    if truth is not None:
        panels["ground truth"] = mosaic(truth)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.8), squeeze=False)
    for ax, (name, img) in zip(axes[0], panels.items()):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(name + "\n(rows: appearance; columns: pose)", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def lines_png(x: np.ndarray, series: dict[str, np.ndarray], xlabel: str, title: str = "") -> bytes:
    """One panel per series against ``x`` (e.g. the controllers over training steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.8), squeeze=False)
    for ax, (name, ys) in zip(axes[0], series.items()):
        ax.plot(x, ys, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def violin_png(errors: dict[str, np.ndarray], ylabel: str, title: str = "") -> bytes:
    """A violin of per-example errors per name (means marked; log scale when they span decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(errors)
    data = [np.asarray(errors[k], np.float64) for k in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 1.5, 3.4))
    positive = all((d > 0).all() for d in data)
    shown = [np.log10(d) for d in data] if positive else data
    ax.violinplot(shown, showmeans=True, showmedians=False, showextrema=False)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set_ylabel(("log10 " if positive else "") + ylabel)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=9)
    return _png(fig)
