"""Pair sources: pairs of images that share known concepts (IIN's factor pairs).

A pair source (one per ImageSet, or per sketch) has

- ``factors``: the concept names, in factor order (the residual is implicit, always last);
- ``target_kinds``: what a linear probe predicts per target, ``class`` or ``value``;
- ``probes``: where probes are fitted and scored: ``train`` (fitted on the training split's
  targets, scored on the evaluated split's; classes shared between splits), ``within`` (fitted on
  a fixed half of the evaluated split, scored on the other half: class-disjoint splits such as
  glyphs') or ``rendered`` (on images the source renders itself, :meth:`rendered`; sketches);
- ``targets(images) -> {target: values}`` (``train`` / ``within``), or
  ``rendered(n, rng) -> (pixels, {target: values})`` (``rendered``);
- ``sample(n, rng, factor=None) -> (pixels1, pixels2, shared)``: uint8 pixels of both members and
  ``shared``, n x (F + 1) booleans (the residual, last, is never shared). ``factor[i] = k >= 0``:
  pair i shares exactly factor k; ``factor[i] = ~k`` (that is -k-1): it shares every factor but k.
  Vectorized, and a function of the generator only.

:class:`MetadataPairs` serves any data set whose factors are categorical metadata columns (glyphs:
character, font weight, slant): it picks both members among the set's own images.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from reprlab.platform.data.types import ImageSet

MAX_ROUNDS = 10_000  # rejection rounds of a partner draw (each round covers every pending pair)


def factor_codes(columns: list[np.ndarray]) -> np.ndarray:
    """Categorical columns (any dtype) as an N x F integer code matrix."""
    return np.stack([np.unique(np.asarray(c), return_inverse=True)[1].reshape(-1) for c in columns], 1).astype(np.int64)


class _Pattern:
    """Rows that have a partner which agrees on the factors in ``keep`` and differs on all others,
    and the groups (rows agreeing on ``keep``) partners are drawn from."""

    def __init__(self, codes: np.ndarray, keep: tuple[bool, ...]) -> None:
        keep_idx = [f for f, k in enumerate(keep) if k]
        other = [f for f, k in enumerate(keep) if not k]
        self.other = np.array(other, np.int64)
        # partners of row i, by inclusion-exclusion over the factors that must differ:
        # sum over U subset of `other` of (-1)^|U| #(rows agreeing with i on keep + U); i cancels out
        partners = np.zeros(len(codes), np.int64)
        for r in range(len(other) + 1):
            for extra in combinations(other, r):
                cols = keep_idx + list(extra)
                _, inv, cnt = np.unique(codes[:, cols], axis=0, return_inverse=True, return_counts=True)
                partners += (-1) ** r * cnt[inv.reshape(-1)]
        self.rows = np.flatnonzero(partners > 0)
        _, self.group, self.count = np.unique(codes[:, keep_idx], axis=0, return_inverse=True, return_counts=True)
        self.group = self.group.reshape(-1)
        self.order = np.argsort(self.group, kind="stable")
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])


class MetadataPairs:
    """Pairs among the images of one ImageSet whose factors are categorical columns (N x F
    ``codes``). A pair sharing the factors S agrees on S and differs on every other factor; a
    pattern no image can satisfy is never drawn (and asking for it is a ValueError)."""

    factors: tuple[str, ...] = ()
    probes = "within"

    def __init__(self, images: ImageSet, codes: np.ndarray, all_but: float = 0.0) -> None:
        self.pixels = images.pixels
        self.codes = np.asarray(codes, np.int64)
        self.all_but = float(all_but)
        f = self.codes.shape[1]
        self.patterns: dict[int, _Pattern] = {}  # k: exactly k; ~k: all but k
        for k in range(f):
            only = tuple(i == k for i in range(f))
            for key, keep in ((k, only), (~k, tuple(not v for v in only))):
                p = _Pattern(self.codes, keep)
                if len(p.rows) and (key >= 0 or f > 2):  # with two factors "all but k" is "only the other"
                    self.patterns[key] = p
        self.single = np.array([k for k in self.patterns if k >= 0], np.int64)
        self.multi = np.array([k for k in self.patterns if k < 0], np.int64)
        if not len(self.single):
            raise ValueError("no two images share exactly one factor")

    def draw(self, n: int, rng: np.random.Generator, factor: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Rows of both members (``first``, ``second``), ``factor`` (the pattern key of each pair)
        and ``shared`` (n x (F + 1) booleans)."""
        if factor is None:
            factor = self.single[rng.integers(0, len(self.single), n)]
            if self.all_but > 0 and len(self.multi):
                multi = rng.random(n) < self.all_but
                factor = np.where(multi, self.multi[rng.integers(0, len(self.multi), n)], factor)
        factor = np.asarray(factor, np.int64)
        missing = set(np.unique(factor).tolist()) - set(self.patterns)
        if missing:
            raise ValueError(f"no pair of images fits the pattern(s) {sorted(missing)}")
        first, second = np.empty(n, np.int64), np.empty(n, np.int64)
        for key, p in self.patterns.items():
            idx = np.flatnonzero(factor == key)
            if not len(idx):
                continue
            a = p.rows[rng.integers(0, len(p.rows), len(idx))]
            b = np.empty(len(idx), np.int64)
            pending = np.arange(len(idx))
            for _ in range(MAX_ROUNDS):  # rejection sampling inside each row's group, vectorized
                g = p.group[a[pending]]
                cand = p.order[p.start[g] + (rng.random(len(pending)) * p.count[g]).astype(np.int64)]
                ok = (self.codes[cand][:, p.other] != self.codes[a[pending]][:, p.other]).all(1)
                b[pending[ok]] = cand[ok]
                pending = pending[~ok]
                if not len(pending):
                    break
            else:
                raise RuntimeError("pair sampling did not converge")
            first[idx], second[idx] = a, b
        f = self.codes.shape[1]
        k = np.where(factor >= 0, factor, ~factor)
        one = np.arange(f)[None] == k[:, None]
        shared = np.where((factor >= 0)[:, None], one, ~one)
        return {"first": first, "second": second, "factor": factor,
                "shared": np.concatenate([shared, np.zeros((n, 1), bool)], 1)}

    def sample(self, n: int, rng: np.random.Generator, factor: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.draw(n, rng, factor)
        return self.pixels[d["first"]], self.pixels[d["second"]], d["shared"]
