"""Whole samples for methods beyond labeled images: an input image, its target image, dense targets.

:class:`SampleLoader` turns indices of a global batch into a dict of tensors: ``image`` (and
``target`` for paired sets) as normalized network input of side ``size``, and every dense target
of the set by name (``mask``: N x size x size, ``flow``: N x 2 x size x size in output pixels,
``keypoints``: N x K x 2 with ``<name>_visible``). With augmentation, each sample gets one random
resized crop and flip (:class:`~reprlab.platform.data.augment.JointAugment`) applied to all of its
parts together, so input, target and dense targets stay aligned. The crops of a global batch are
drawn from a generator seeded by (seed, iteration) for the whole batch, then a rank takes its rows:
a sample is the same on one worker or many, and after a resume. Without augmentation (evaluation)
the whole image is resized to ``size``.
"""

from __future__ import annotations

import numpy as np
import torch

from reprlab.platform.data.augment import JointAugment, augment_sample
from reprlab.platform.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, decode_tensor
from reprlab.platform.data.types import ImageSet


def _unit_images(images: ImageSet, index: np.ndarray) -> list[torch.Tensor] | torch.Tensor:
    """Images ``index`` as float 3 x H x W in [0, 1]: one N x 3 x H x W tensor when they share a
    size (in-memory sets always), else a list."""
    if images.pixels is not None:
        x = torch.from_numpy(np.ascontiguousarray(images.pixels[index])).permute(0, 3, 1, 2).float().div_(255.0)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    data = images.encoded(index)
    decoded = [decode_tensor(b, images.where(i)).float().div_(255.0) for i, b in zip(index, data)]
    if len({tuple(d.shape) for d in decoded}) == 1:
        return torch.stack(decoded)
    return decoded


def _row(v, i: int) -> torch.Tensor:
    return v[i][None] if isinstance(v, list) else v[i : i + 1]


class SampleLoader:
    def __init__(self, images: ImageSet, size: int, augment: bool, seed: int = 0,
                 transform: JointAugment | None = None) -> None:
        self.images, self.size, self.augment, self.seed = images, size, augment, seed
        self.transform = transform or JointAugment(size)
        self.kinds = {"image": "image", **({"target": "image"} if images.target is not None else {}),
                      **{name: d.kind for name, d in images.dense.items()}}
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def thetas(self, n: int, iteration: int) -> torch.Tensor:
        """The crops of a global batch of ``n`` samples at ``iteration`` (identity without
        augmentation)."""
        if not self.augment:
            return self.transform.identity(n)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, iteration]).generate_state(1)[0]))
        return self.transform.draw(n, gen)

    def load(self, index: np.ndarray, iteration: int = 0, rows: slice | None = None) -> dict[str, torch.Tensor]:
        """The samples ``index[rows]`` of the global batch ``index``, transformed."""
        index = np.asarray(index, dtype=np.int64)
        rows = rows if rows is not None else slice(0, len(index))
        theta = self.thetas(len(index), iteration)[rows]
        mine = index[rows]
        parts: dict[str, object] = {"image": _unit_images(self.images, mine)}
        if self.images.target is not None:
            parts["target"] = _unit_images(self.images.target, mine)
        for name, dense in self.images.dense.items():
            parts[name] = torch.from_numpy(np.ascontiguousarray(dense.values[mine]))
        if all(isinstance(v, torch.Tensor) for v in parts.values()):
            out = augment_sample(parts, theta, self.size, self.kinds)
        else:  # images of different sizes: one sample at a time
            singles = [augment_sample({k: _row(v, i) for k, v in parts.items()}, theta[i : i + 1], self.size, self.kinds)
                       for i in range(len(mine))]
            out = {k: torch.cat([s[k] for s in singles]) for k in singles[0]} if singles else {}
        for k, kind in self.kinds.items():
            if kind == "image" and k in out:
                out[k] = (out[k] - self.mean) / self.std
        return out
