"""Measures and figures of dense semantic correspondence (the ``correspondence`` method's
``evaluate``; ``specs/correspondence.md``).

Conventions: points are (x, y) image pixels, column first, pixel i's centre at ``i + 0.5``; a flow
is N x 2 x h x w (dx, dy) in image pixels on a grid of cells covering the image, A's p mapping to
p + u(p) in B (as in ``reprlab.platform.nn.flownet``); an object box is (x0, y0, x1, y1) in pixel
edges, so a mask's box spans its first to one past its last foreground pixel (:func:`mask_box`).

Metrics (a split's value pools every keypoint, pixel or match of its pairs unless said otherwise):

- :func:`pck`: fraction of keypoints whose prediction lies within alpha x max(box h, box w) of the
  truth, B's object box, for alpha in (0.05, 0.1, 0.15) (the PF-PASCAL convention);
- :func:`transfer_by_flow` (bilinear lookup of the flow at A's keypoints) and
  :func:`transfer_by_nn` (the cell of B whose descriptor is most similar to A's, bilinearly
  sampled, at the keypoint: the features alone, for ``nn_pck``);
- :func:`epe`: mean end-point error over A's foreground pixels;
- :func:`mask_iou`: intersection over union per image, averaged over images;
- :func:`match_precision`: the fraction of valid mined matches within 0.05 x max(box h, w) of the
  ground-truth correspondence, and the mean count of matches per pair;
- :func:`stereo_pck`: PCK at fractions of the image side (**[design]**: which side, and how the
  disparity is scaled, is the caller's; the spec's identity numbers are of a 1/4-scale stereo pair).

Figures (PNG bytes, matplotlib Agg, the house style of ``transfer.py``): :func:`transfers_png`,
:func:`warp_png`, :func:`mixture_png`, :func:`mining_png`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reprlab.platform.data.warps import mask_box  # noqa: F401  (the box convention, with the pixel frames)

ALPHAS = (0.05, 0.1, 0.15)


def box_size(box: torch.Tensor) -> torch.Tensor:
    """max(box h, box w) of N x 4 boxes: the PCK reference length."""
    return torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])


def pck(pred: torch.Tensor, true: torch.Tensor, box: torch.Tensor, alphas: Sequence[float] = ALPHAS,
        visible: torch.Tensor | None = None, name: str = "pck") -> dict[str, float]:
    """``{f"{name}@{alpha}": fraction}`` of the (visible) keypoints, N x K x 2 each, whose
    prediction is within alpha x max(h, w) of the box (N x 4) of the image they are in."""
    err = (pred.float() - true.float()).norm(dim=-1)  # N x K
    ref = box_size(box.float())[:, None]
    vis = torch.ones_like(err, dtype=torch.bool) if visible is None else visible.bool()
    total = vis.sum().clamp_min(1)
    return {f"{name}@{a:g}": float(((err <= a * ref) & vis).sum() / total) for a in alphas}


def _lookup(field: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear value of a field N x C x h x w (covering an H x W image) at pixel points N x P x 2:
    N x P x C (border values outside)."""
    h, w = image_size
    grid = points.to(field.dtype) * torch.tensor([2.0 / w, 2.0 / h], dtype=field.dtype, device=field.device) - 1
    out = F.grid_sample(field, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


def transfer_by_flow(kp_a: torch.Tensor, flow: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Keypoints of A (N x K x 2) moved by the flow A -> B looked up bilinearly at them."""
    return kp_a + _lookup(flow, kp_a, image_size).to(kp_a.dtype)


def transfer_by_nn(kp_a: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor, image_size: tuple[int, int]
                   ) -> torch.Tensor:
    """Keypoints of A sent to the centre of the cell of B whose descriptor has the highest cosine
    with A's descriptor at the keypoint (bilinearly sampled): N x K x 2 pixels."""
    da = F.normalize(_lookup(fa, kp_a, image_size), dim=-1)  # N x K x D
    fbn = F.normalize(fb, dim=1)
    best = torch.bmm(da, fbn.flatten(2)).argmax(-1)  # N x K
    hb, wb = fb.shape[-2:]
    h, w = image_size
    x = (best % wb).to(kp_a.dtype).add(0.5) * (w / wb)
    y = torch.div(best, wb, rounding_mode="floor").to(kp_a.dtype).add(0.5) * (h / hb)
    return torch.stack([x, y], -1)


def epe(flow: torch.Tensor, true_flow: torch.Tensor, fg: torch.Tensor) -> float:
    """Mean |u - u*| over the foreground pixels of A (flows N x 2 x H x W, fg N x H x W); a
    predicted flow on a coarser grid is upsampled bilinearly first."""
    if flow.shape[-2:] != true_flow.shape[-2:]:
        flow = F.interpolate(flow, size=true_flow.shape[-2:], mode="bilinear", align_corners=False)
    err = (flow.float() - true_flow.float()).norm(dim=1)
    m = fg.bool()
    return float(err[m].mean()) if m.any() else float("nan")


def mask_iou(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over images of |pred & true| / |pred | true| (masks N x H x W; an image with both
    empty counts 1)."""
    p, t = pred.bool().flatten(1), true.bool().flatten(1)
    inter, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp_min(1), 1.0).mean())


def match_precision(pos_a: torch.Tensor, pos_b: torch.Tensor, valid: torch.Tensor, true_flow: torch.Tensor,
                    box_b: torch.Tensor, image_size: tuple[int, int], frac: float = 0.05) -> dict[str, float]:
    """Mined matches (padded N x M x 2 with ``valid``) against the ground-truth flow A -> B:
    ``precision`` = fraction of valid matches within ``frac`` x max(box h, w) of p + u*(p) (NaN
    without matches), ``count`` = mean valid matches per pair."""
    gt = transfer_by_flow(pos_a.float(), true_flow.float(), image_size)
    ok = (pos_b.float() - gt).norm(dim=-1) <= frac * box_size(box_b.float())[:, None]
    v = valid.bool()
    n = int(v.sum())
    return {"precision": float((ok & v).sum() / n) if n else float("nan"), "count": n / max(len(v), 1)}


def stereo_pck(pred: torch.Tensor, true: torch.Tensor, side: float, fractions: Sequence[float] = (0.02, 0.05),
               valid: torch.Tensor | None = None, name: str = "stereo_pck") -> dict[str, float]:
    """PCK at ``fractions`` of the image side: points (... x 2) whose prediction is within
    fraction x ``side`` of the truth, among ``valid`` ones (e.g. finite disparity)."""
    err = (pred.float() - true.float()).norm(dim=-1)
    v = torch.ones_like(err, dtype=torch.bool) if valid is None else valid.bool()
    total = v.sum().clamp_min(1)
    return {f"{name}@{f:g}": float(((err <= f * side) & v).sum() / total) for f in fractions}


# ---- figures --------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def flow_to_rgb(flow: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """2 x H x W flow -> H x W x 3 in [0, 1]: hue = direction, saturation = length / ``max_norm``
    (default the largest length), value 1 (white = no motion)."""
    from matplotlib.colors import hsv_to_rgb

    dx, dy = np.asarray(flow, np.float64)
    mag = np.hypot(dx, dy)
    top = max_norm if max_norm else max(float(mag.max()), 1e-9)
    hsv = np.stack([(np.arctan2(dy, dx) / (2 * np.pi)) % 1.0, np.clip(mag / top, 0, 1), np.ones_like(mag)], -1)
    return hsv_to_rgb(hsv)


def mask_overlay(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """H x W masks -> H x W x 3: white = both, red = predicted only, blue = missed, black = neither."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    return np.stack([p, p & t, t], -1).astype(np.float64)


def transfers_png(img_a: np.ndarray, img_b: np.ndarray, kp_a: np.ndarray, kp_pred: np.ndarray,
                  kp_true: np.ndarray, box_b: np.ndarray, alpha: float = 0.1, title: str = "") -> bytes:
    """One row per pair: A with its keypoints, B with the transferred ones, green where within
    alpha x max(box h, w) of the truth and red (with a line to the truth) where not. Images
    N x H x W x 3 in [0, 1]; keypoints N x K x 2 pixels; boxes N x 4."""
    plt = _pyplot()
    n = len(img_a)
    ok = np.linalg.norm(kp_pred - kp_true, axis=-1) <= alpha * np.maximum(
        box_b[:, 2] - box_b[:, 0], box_b[:, 3] - box_b[:, 1])[:, None]
    fig, axes = plt.subplots(n, 2, figsize=(4.0, 2.0 * n + 0.3), squeeze=False)
    for i in range(n):
        colours = np.where(ok[i], "lime", "red")
        for ax, img, pts in ((axes[i, 0], img_a[i], kp_a[i]), (axes[i, 1], img_b[i], kp_pred[i])):
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest", extent=(0, img.shape[1], img.shape[0], 0))
            ax.scatter(pts[:, 0], pts[:, 1], s=10, c=colours, edgecolors="black", linewidths=0.4)
            ax.axis("off")
        for (px, py), (tx, ty), good in zip(kp_pred[i], kp_true[i], ok[i]):
            if not good:
                axes[i, 1].plot([px, tx], [py, ty], color="red", lw=0.6)
        axes[i, 1].set_title(f"PCK@{alpha:g} {ok[i].mean():.2f}", fontsize=7)
    axes[0, 0].set_title("A", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def warp_png(img_a: np.ndarray, img_b: np.ndarray, a_on_b: np.ndarray, flow: np.ndarray,
             masks: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """One row per pair: A, B, A warped onto B (computed by the caller, e.g. ``warp(a, flow_ba,
    size)`` of ``reprlab.platform.nn.flownet``: A pulled onto B's grid by the flow B -> A), the
    flow's colour image
    (``flow`` N x 2 x h x w; one colour scale per row) and, per entry of ``masks`` (e.g. {"mask A":
    (pred, true), "mask B": ...}, N x H x W each), the prediction against the truth."""
    plt = _pyplot()
    n = len(img_a)
    cols = 4 + len(masks)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n + 0.4), squeeze=False)
    names = ["A", "B", "A warped onto B", "flow A->B"] + [f"{k} (red: extra, blue: missed)" for k in masks]
    for i in range(n):
        panels = [img_a[i], img_b[i], a_on_b[i], flow_to_rgb(flow[i])]
        panels += [mask_overlay(pred[i], true[i]) for pred, true in masks.values()]
        for j, img in enumerate(panels):
            axes[i, j].imshow(np.clip(img, 0, 1), interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(names[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def mixture_png(epochs: np.ndarray, weights: dict[str, np.ndarray], dilations: Sequence[int], title: str = "") -> bytes:
    """One panel per MSConv layer: its branch weights (E x K, averaged over channels) against the
    epochs, one line per dilation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(weights), figsize=(3.0 * len(weights), 2.6), squeeze=False)
    for ax, (name, w) in zip(axes[0], weights.items()):
        w = np.asarray(w, np.float64)
        for k, d in enumerate(dilations):
            ax.plot(epochs, w[:, k], lw=1.2, marker="o", ms=2.5, label=f"d={d}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mixture weight", fontsize=8)
    axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def mining_png(rounds: np.ndarray, precision: dict[str, np.ndarray], count: dict[str, np.ndarray],
               title: str = "") -> bytes:
    """Mined-match precision and count per re-mining, one line per variant (e.g. "filtered",
    "raw mutual NN")."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.6))
    for ax, series, label in ((axes[0], precision, "precision"), (axes[1], count, "matches per pair")):
        for name, ys in series.items():
            ax.plot(rounds, ys, lw=1.2, marker="o", ms=2.5, label=name)
        ax.set_xlabel("re-mining (epoch)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)
