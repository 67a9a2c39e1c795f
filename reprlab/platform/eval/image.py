"""Image-to-image metrics, classical enhancement baselines and their figures.

Metrics (per image; a split's value is the mean over its images):

- ``psnr``: 10 log10(1 / MSE) of images in [0, 1] (8-bit outputs are quantized before scoring);
- ``ssim``: the Gaussian-window SSIM of Wang et al. with exactly scikit-image's
  ``structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``: an 11-tap Gaussian (sigma 1.5, truncated at 3.5 sigma), K1 0.01,
  K2 0.03, the SSIM map cropped by 5 pixels on every side, averaged, then the mean over channels.
  Computed in torch (float64, batched); ``tests/test_exposure.py`` checks it against scikit-image.
  Published ports differ: LZ-CH's exposure script calls scikit-image's defaults on uint8 (a 7 x 7
  uniform window, data range 255, sample covariance), whose numbers are not comparable to these.
- ``l1``: mean absolute error in [0, 1].

Baselines (evaluation only, numpy uint8 H x W x 3 in and out): histogram equalization of the
luminance (Y of YCbCr), CLAHE (scikit-image's ``equalize_adapthist``, clip limit 0.01) and the
oracle per-image global look-up table (for each channel, every input value mapped to the mean
target value at that input value: the best a global tone curve could do; it reads the target).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR of every image of N x C x H x W in [0, 1]: N values (inf for identical images)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _window_matrix(n: int, device) -> torch.Tensor:
    """n x (n - 2r) float64: column j holds the Gaussian window at rows j..j + 2r (a valid
    correlation as one matrix product: on a CPU far faster than a float64 depthwise convolution)."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    k = k / k.sum()
    m = n - 2 * radius
    if m < 1:
        raise ValueError(f"SSIM needs images of at least {2 * radius + 1} pixels a side, got {n}")
    rows = torch.arange(m)[None, :] + torch.arange(2 * radius + 1)[:, None]
    w = torch.zeros(n, m, dtype=torch.float64)
    w[rows, torch.arange(m)[None, :].expand_as(rows)] = k[:, None].expand_as(rows)
    return w.to(device)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of every image of N x C x H x W in [0, 1] (scikit-image's settings above): N values."""
    return ssim_map(a, b).mean((2, 3)).mean(1)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The SSIM map (float64, N x C x (H - 2r) x (W - 2r), r = the window's radius, 5): the valid
    correlation is scikit-image's map cropped by r on every side."""
    a, b = a.double(), b.double()
    wh, ww = _window_matrix(a.shape[-2], a.device), _window_matrix(a.shape[-1], a.device)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return wh.T @ (x @ ww)

    ux, uy = filt(a), filt(b)
    vx, vy, vxy = filt(a * a) - ux * ux, filt(b * b) - uy * uy, filt(a * b) - ux * uy
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).abs().flatten(1).mean(1)


# ---- classical baselines ----------------------------------------------------------------------


def histeq_luminance(img: np.ndarray) -> np.ndarray:
    """Histogram equalization of Y (YCbCr), chroma kept."""
    from skimage import color, exposure

    ycc = color.rgb2ycbcr(img)
    y = ycc[..., 0]
    eq = exposure.equalize_hist((y - 16) / 219.0)
    ycc[..., 0] = 16 + 219 * eq
    return (np.clip(color.ycbcr2rgb(ycc), 0, 1) * 255).round().astype(np.uint8)


def clahe(img: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    from skimage import exposure

    return (np.clip(exposure.equalize_adapthist(img, clip_limit=clip_limit), 0, 1) * 255).round().astype(np.uint8)


def oracle_lut(img: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per channel, each input value -> the mean target value where the input has it."""
    out = np.empty_like(img)
    for ch in range(img.shape[-1]):
        x, t = img[..., ch].ravel(), target[..., ch].ravel().astype(np.float64)
        counts = np.bincount(x, minlength=256)
        lut = np.bincount(x, weights=t, minlength=256) / np.maximum(counts, 1)
        out[..., ch] = lut.round().astype(np.uint8)[img[..., ch]]
    return out


BASELINES = {"histeq": histeq_luminance, "clahe": clahe}


# ---- figures ------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def image_grid_png(rows: list[list[np.ndarray]], row_titles: list[str], col_titles: list[str]) -> bytes:
    """A grid of H x W x 3 images (rows x columns), titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(2.2 * nc, 2.0 * nr), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(nc):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(np.clip(row[j], 0, 1) if row[j].dtype != np.uint8 else row[j])
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
        axes[i][0].text(-0.05, 0.5, row_titles[i], transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    return _png(fig)


def curves_png(x_labels: list[str], curves: dict[str, list[float]], ylabel: str, title: str = "") -> bytes:
    """One line per name over categorical x values (e.g. PSNR by EV per variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, ys in curves.items():
        ax.plot(range(len(x_labels)), [y if math.isfinite(y) else np.nan for y in ys], marker="o", label=name)
    ax.set_xticks(range(len(x_labels)), x_labels)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _png(fig)


def xy_png(series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str = "") -> bytes:
    """One line per name over numeric x values (e.g. neighbour precision by k, per round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, (x, y) in series.items():
        ax.plot(np.asarray(x), np.asarray(y, dtype=float), marker="." if len(x) > 12 else "o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _png(fig)
