"""Match mining between descriptor maps, the contrastive feature loss and the parametric
(global affine, thin-plate spline) fits of the dense-correspondence method (Ufer et al., GCPR 2019).

The abstract says the training matches are mined "geometrically informed" from image pairs of one
category; the procedure below is our reading (**[design]**, ``specs/correspondence.md``):

1. :func:`mutual_nn`: cosine similarity of every cell of A with every cell of B (one batched
   matrix product; descriptors are L2-normalized), argmax both ways, keep the mutual pairs.
2. :func:`ransac_affine`: per pair, ``hypotheses`` random 3-point minimal sets from the mutual
   matches (uniform without replacement: the top 3 of uniform random keys over the valid slots),
   all affine models solved at once, inliers counted within ``tau_px``, the best model refitted by
   least squares on its inliers; the inliers of the refit are the mined matches.
3. :func:`hardest_negatives`: for each match (p, q), the cell of B most similar to f_A(p) among
   those farther than ``r_neg`` (strictly) from q.
4. :func:`contrastive_loss`: ``y d^2 + (1 - y) relu(m - d)^2`` (Chopra et al. 2005), d the
   Euclidean distance of descriptors, m = 1.0.

Conventions. Points are pixel coordinates (x, y) of the image, column first, the centre of pixel
i at ``i + 0.5`` (as in ``reprlab.platform.data.augment``); cell (i, j) of a descriptor map at
``stride`` pixels per cell sits at ((j + 0.5) stride, (i + 0.5) stride); flat cell index
``i W + j``. Matches of N pairs are padded (:class:`Matches`): one slot per cell of A with a
``valid`` mask, so every step is batched over pairs without ragged lists. An affine model
``theta`` (N x 2 x 3) maps a point of A to B in pixels: ``q = theta[:, :, :2] p + theta[:, :, 2]``
(not ``F.affine_grid``'s normalized convention).

The parametric baselines (:func:`fit_affine`, :func:`fit_tps`) fit mined matches and return dense
flows (:func:`affine_flow`, :func:`tps_flow`): N x 2 x H x W pixel displacements u with A's pixel
p mapping to p + u(p) in B. The TPS is Bookstein's: f(q) = a_0 + A q + sum_i w_i U(|q - c_i|),
U(r) = r^2 log r^2, fitted in coordinates scaled to [-1, 1] by the image side so that ``reg``
(the smoothing weight added to the kernel's diagonal) does not depend on the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


def cell_centers(h: int, w: int, stride: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h w) x 2 pixel coordinates (x, y) of the cells of an h x w map, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2).add(0.5).mul(stride)


def gather_cells(f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Descriptors N x D x H x W at flat cell indices N x M -> N x M x D."""
    flat = f.flatten(2)
    return torch.gather(flat, 2, idx[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def similarity(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """N x (Ha Wa) x (Hb Wb) dot products of descriptor maps (cosines when L2-normalized)."""
    return torch.bmm(fa.flatten(2).transpose(1, 2), fb.flatten(2))


@dataclass
class Matches:
    """Matches of N pairs, padded: slot m holds cell ``idx_a[:, m]`` of A and its match
    ``idx_b[:, m]`` in B, used where ``valid``. Positions in image pixels."""

    idx_a: torch.Tensor  # N x M long
    idx_b: torch.Tensor  # N x M long
    pos_a: torch.Tensor  # N x M x 2
    pos_b: torch.Tensor  # N x M x 2
    sim: torch.Tensor  # N x M cosine of the two descriptors
    valid: torch.Tensor  # N x M bool

    def count(self) -> torch.Tensor:
        """Valid matches per pair (N)."""
        return self.valid.sum(1)

    def replace_valid(self, valid: torch.Tensor) -> Matches:
        return Matches(self.idx_a, self.idx_b, self.pos_a, self.pos_b, self.sim, valid)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (for a checkpoint's mined-match cache)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Matches:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


def mutual_nn(fa: torch.Tensor, fb: torch.Tensor, stride: float) -> Matches:
    """Mutual nearest neighbours of descriptor maps fa (N x D x Ha x Wa) and fb (N x D x Hb x Wb):
    slot m = cell m of A, matched to its most similar cell of B, valid where that cell's most
    similar cell of A is m again. ``stride``: image pixels per cell."""
    n, _, ha, wa = fa.shape
    hb, wb = fb.shape[-2:]
    sim = similarity(fa, fb)
    s_ab, nn_ab = sim.max(2)  # N x HWa
    nn_ba = sim.argmax(1)  # N x HWb
    idx_a = torch.arange(ha * wa, device=fa.device).expand(n, -1)
    valid = torch.gather(nn_ba, 1, nn_ab) == idx_a
    ca = cell_centers(ha, wa, stride, fa.device)  # positions in float32 whatever the descriptors' dtype
    cb = cell_centers(hb, wb, stride, fa.device)
    return Matches(idx_a, nn_ab, ca.expand(n, -1, -1), cb[nn_ab], s_ab.float(), valid)


def _homogeneous(p: torch.Tensor) -> torch.Tensor:
    return torch.cat([p, torch.ones_like(p[..., :1])], -1)


def fit_affine(pos_a: torch.Tensor, pos_b: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares affine maps A -> B, batched: points N x M x 2, weights N x M (0/1 or
    soft). Returns theta (N x 2 x 3) and ``ok`` (N bool: False when the weighted points do not
    span the plane; theta is then the identity). Solved in float64 on coordinates centred on
    their weighted mean."""
    a, b, wt = pos_a.double(), pos_b.double(), weights.double()
    total = wt.sum(1, keepdim=True).clamp_min(1e-12)
    ma, mb = (wt[..., None] * a).sum(1) / total, (wt[..., None] * b).sum(1) / total
    x, y = _homogeneous(a - ma[:, None]), b - mb[:, None]
    xtx = torch.einsum("nm,nmi,nmj->nij", wt, x, x)
    xty = torch.einsum("nm,nmi,nmj->nij", wt, x, y)
    sxx, syy, sxy = xtx[:, 0, 0], xtx[:, 1, 1], xtx[:, 0, 1]
    ok = (sxx * syy - sxy**2 > 1e-9 * (sxx + syy) ** 2) & (wt > 0).sum(1).ge(3)  # not collinear
    eye = torch.eye(3, dtype=xtx.dtype, device=xtx.device)
    sol = torch.linalg.solve(torch.where(ok[:, None, None], xtx, eye), torch.where(ok[:, None, None], xty, 0.0))
    lin = sol[:, :2].transpose(1, 2)  # N x 2 x 2
    t = mb + sol[:, 2] - torch.einsum("nij,nj->ni", lin, ma)
    theta = torch.cat([lin, t[..., None]], 2)
    ident = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=theta.dtype, device=theta.device)
    return torch.where(ok[:, None, None], theta, ident).to(pos_a.dtype), ok


def apply_affine(theta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """theta N x 2 x 3 applied to points N x M x 2."""
    return torch.einsum("nij,nmj->nmi", theta[:, :, :2], p) + theta[:, None, :, 2]


def ransac_affine(pos_a: torch.Tensor, pos_b: torch.Tensor, valid: torch.Tensor, tau_px: float,
                  hypotheses: int = 512, generator: torch.Generator | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """RANSAC of an affine map A -> B over padded matches (N x M x 2, ``valid`` N x M), vectorized
    over pairs and hypotheses. Returns the refitted theta (N x 2 x 3) and its inliers (N x M:
    valid and within ``tau_px`` pixels). Pairs with fewer than 3 valid matches get the identity
    and no inliers. Draws come from ``generator`` (a CPU generator; keys moved to the data's
    device), so a seeded generator gives the same matches on any device."""
    n, m, _ = pos_a.shape
    if m < 3:
        ident = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=pos_a.dtype, device=pos_a.device)
        return ident.expand(n, 2, 3).clone(), torch.zeros_like(valid)
    work = torch.float64
    a, b = pos_a.to(work), pos_b.to(work)
    keys = torch.rand(n, hypotheses, m, generator=generator, dtype=torch.float32).to(pos_a.device)
    keys = keys.masked_fill(~valid[:, None, :], -1.0)
    pick = keys.topk(3, dim=2).indices  # N x H x 3: a uniform 3-subset of the valid slots
    xa = torch.gather(a[:, None].expand(-1, hypotheses, -1, -1), 2, pick[..., None].expand(-1, -1, -1, 2))
    xb = torch.gather(b[:, None].expand(-1, hypotheses, -1, -1), 2, pick[..., None].expand(-1, -1, -1, 2))
    mat = _homogeneous(xa)  # N x H x 3 x 3, rows [x y 1]
    # twice the triangle's area; collinear (or repeated) minimal sets are dropped
    span = (a.abs().amax((1, 2)) + 1.0)[:, None]
    ok = torch.linalg.det(mat).abs() > 1e-6 * span**2
    ok &= (torch.gather(valid[:, None].expand(-1, hypotheses, -1), 2, pick)).all(-1)
    eye = torch.eye(3, dtype=work, device=a.device)
    sol = torch.linalg.solve(torch.where(ok[..., None, None], mat, eye), xb)  # N x H x 3 x 2: q^T = [p^T 1] sol
    pred = torch.einsum("nmi,nhij->nhmj", _homogeneous(a), sol)
    inl = ((pred - b[:, None]).norm(dim=-1) < tau_px) & valid[:, None] & ok[..., None]
    best = inl.sum(-1).argmax(1)  # the first of the most-supported hypotheses
    best_inl = inl[torch.arange(n, device=a.device), best]
    theta, fitted = fit_affine(pos_a, pos_b, best_inl.to(pos_a.dtype))
    inliers = ((apply_affine(theta, pos_a) - pos_b).norm(dim=-1) < tau_px) & valid & fitted[:, None]
    return theta, inliers


def mine_matches(fa: torch.Tensor, fb: torch.Tensor, stride: float, tau_px: float, hypotheses: int = 512,
                 generator: torch.Generator | None = None, geometric: bool = True) -> Matches:
    """Mutual nearest neighbours, then (``geometric``) the RANSAC-affine inliers among them;
    ``geometric=False`` is the raw mutual-NN baseline."""
    matches = mutual_nn(fa, fb, stride)
    if not geometric:
        return matches
    _, inliers = ransac_affine(matches.pos_a, matches.pos_b, matches.valid, tau_px, hypotheses, generator)
    return matches.replace_valid(inliers)


def hardest_negatives(fa: torch.Tensor, fb: torch.Tensor, matches: Matches, r_neg_px: float, stride: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each slot, the cell of B most similar to A's descriptor among the cells farther than
    ``r_neg_px`` from the matched point (strictly): flat indices N x M and a validity mask N x M
    (False for invalid matches and when no cell of B is that far)."""
    hb, wb = fb.shape[-2:]
    cb = cell_centers(hb, wb, stride, fb.device)
    sim = torch.bmm(gather_cells(fa, matches.idx_a), fb.flatten(2))  # N x M x HWb
    far = torch.cdist(matches.pos_b.float(), cb[None].expand(len(fb), -1, -1)) > r_neg_px
    masked = sim.masked_fill(~far, float("-inf"))
    return masked.argmax(-1), matches.valid & far.any(-1)


def contrastive_loss(fa: torch.Tensor, fb: torch.Tensor, y: torch.Tensor, margin: float = 1.0,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``y d^2 + (1 - y) relu(margin - d)^2`` over pairs of descriptors (... x D each,
    y ... in {0, 1}: 1 = match), d the Euclidean distance; ``weights`` (...) averages only where
    positive (e.g. valid slots)."""
    d = (fa - fb).norm(dim=-1)
    y = y.to(d.dtype)
    per = y * d.square() + (1 - y) * F.relu(margin - d).square()
    if weights is None:
        return per.mean()
    w = weights.to(d.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


def match_contrastive_loss(fa: torch.Tensor, fb: torch.Tensor, matches: Matches, negatives: torch.Tensor,
                           negatives_valid: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """L_feat on one batch of pairs: every valid match a positive, every valid hardest negative a
    negative (each averaged over its own valid slots, then summed)."""
    da = gather_cells(fa, matches.idx_a)
    pos = contrastive_loss(da, gather_cells(fb, matches.idx_b), torch.ones_like(matches.sim), margin, matches.valid)
    neg = contrastive_loss(da, gather_cells(fb, negatives), torch.zeros_like(matches.sim), margin, negatives_valid)
    return pos + neg


# ---- parametric baselines -------------------------------------------------------------------------


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """The inverse maps B -> A of affine maps theta (N x 2 x 3); a singular map gives the identity."""
    lin, t = theta[:, :, :2].double(), theta[:, :, 2:].double()
    ok = torch.linalg.det(lin).abs() > 1e-9
    eye = torch.eye(2, dtype=lin.dtype, device=lin.device)
    inv = torch.linalg.inv(torch.where(ok[:, None, None], lin, eye))
    out = torch.cat([inv, -inv @ t], 2)
    ident = torch.cat([eye, torch.zeros(2, 1, dtype=lin.dtype, device=lin.device)], 1)
    return torch.where(ok[:, None, None], out, ident).to(theta.dtype)


def affine_flow(theta: torch.Tensor, h: int, w: int, stride: float = 1.0) -> torch.Tensor:
    """Dense flow N x 2 x h x w of theta (N x 2 x 3, pixels) on an h x w grid of ``stride``-pixel
    cells: u(p) = theta(p) - p."""
    p = cell_centers(h, w, stride, theta.device, theta.dtype).expand(len(theta), -1, -1)
    return (apply_affine(theta, p) - p).transpose(1, 2).reshape(len(theta), 2, h, w)


@dataclass
class TPS:
    """A fitted thin-plate spline per pair, in coordinates q = 2 p / side - 1."""

    centers: torch.Tensor  # N x M x 2 (normalized)
    w: torch.Tensor  # N x M x 2 (0 at unused slots)
    a: torch.Tensor  # N x 3 x 2: f(q) = [1 q] a + U w
    side: float
    ok: torch.Tensor  # N bool: False -> the identity


def _tps_kernel(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(p, c, compute_mode="donot_use_mm_for_euclid_dist").square()
    return d2 * torch.log(d2.clamp_min(1e-300))  # U(r) = r^2 log r^2, U(0) = 0


def fit_tps(pos_a: torch.Tensor, pos_b: torch.Tensor, valid: torch.Tensor, side: float, reg: float = 0.0) -> TPS:
    """Thin-plate spline A -> B through (``reg`` = 0) or near (``reg`` > 0) the valid matches, one
    batched (M + 3)-square solve in float64. Unused slots get a unit diagonal and zero rows, which
    forces their weight to 0 without changing the valid block. Pairs whose valid points do not span
    the plane get the identity."""
    n, m, _ = pos_a.shape
    q = pos_a.double() * (2.0 / side) - 1.0
    t = pos_b.double() * (2.0 / side) - 1.0
    v = valid.double()
    k = _tps_kernel(q, q) * v[:, :, None] * v[:, None, :]
    k = k + torch.diag_embed(1.0 - v + reg * v)
    p = _homogeneous(q) * v[..., None]
    top = torch.cat([k, p], 2)
    bottom = torch.cat([p.transpose(1, 2), q.new_zeros(n, 3, 3)], 2)
    lhs = torch.cat([top, bottom], 1)
    rhs = torch.cat([t * v[..., None], q.new_zeros(n, 3, 2)], 1)
    _, ok = fit_affine(pos_a, pos_b, valid.to(pos_a.dtype))  # the points span the plane
    eye = torch.eye(m + 3, dtype=lhs.dtype, device=lhs.device)
    sol = torch.linalg.solve(torch.where(ok[:, None, None], lhs, eye), torch.where(ok[:, None, None], rhs, 0.0))
    ident = torch.cat([q.new_zeros(1, 2), torch.eye(2, dtype=q.dtype, device=q.device)])  # [1 q] ident = q
    a = torch.where(ok[:, None, None], sol[:, m:], ident)
    w = torch.where(ok[:, None, None], sol[:, :m], 0.0)
    return TPS(q, w, a, float(side), ok)


def tps_transform(tps: TPS, points: torch.Tensor) -> torch.Tensor:
    """Points N x P x 2 of A (pixels) mapped to B (pixels)."""
    q = points.double() * (2.0 / tps.side) - 1.0
    out = _homogeneous(q) @ tps.a + _tps_kernel(q, tps.centers) @ tps.w
    return ((out + 1.0) * (tps.side / 2.0)).to(points.dtype)


def tps_flow(tps: TPS, h: int, w: int, stride: float = 1.0) -> torch.Tensor:
    """Dense flow N x 2 x h x w of the spline on an h x w grid of ``stride``-pixel cells (about
    30 ms per pair at 64 x 64 with 256 centres on one core; on the 1/4 grid, then upsampled, 1 ms)."""
    n = len(tps.a)
    p = cell_centers(h, w, stride, tps.a.device).expand(n, -1, -1)
    return (tps_transform(tps, p) - p).transpose(1, 2).reshape(n, 2, h, w)
