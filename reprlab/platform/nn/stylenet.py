"""The networks of content-transformation style transfer (Kotovenko, Sanakoyeu, Ma, Lang, Ommer,
CVPR 2019): encoder E, content transformation block T, decoder D, the style discriminator D_s,
the content discriminator D_c, local feature normalization (LFN), the generator / discriminator
win-rate rule and the losses they are trained with (``specs/style_transfer.md``).

Sources, as the spec tags them: [paper] = the CVPR'19 abstract and poster; [ECCV18] = the code of
its predecessor, adaptive style transfer (CompVis/adaptive-style-transfer, ``module.py`` and
``model.py``); [ICCV19] = CompVis/content-style-disentangled-ST (``ops.py``, ``module.py``), the
only public LFN. **[unverified]** marks what the spec could not check against the CVPR'19 paper,
**[design]** what is ours.

- :class:`LocalGroupNorm` (LFN) [ICCV19 ``local_group_norm``; that CVPR'19 uses it is
  **[unverified]**]. Channels are cut into consecutive groups of ``group_size`` channels (G is the
  group *size*, as in the ICCV19 reshape ``[N, H, W, C // G, G]``, not GroupNorm's group count).
  With m(x) the per-pixel mean over a group's channels, B the box filter of window w, stride
  max(1, w // 2) and no padding (VALID), and U the bilinear resize back to H x W::

      mu = U(B(m(x)));  sigma^2 = U(B(m((x - mu)^2)));  y = (x - mu) / sqrt(sigma^2 + eps) * gamma + beta

  [design]: the window is clamped to the map on each side (VALID with a window larger than the
  map has no output; ICCV19 does not clamp), the stride is at least 1 (ICCV19's w // 2 is 0 for
  w = 1), U uses ``align_corners=False`` (half-pixel centres; ICCV19's TF1 ``resize_images`` uses
  the legacy asymmetric mapping, src = dst * in / out, which torch does not offer), gamma starts at
  1 (ICCV19 draws it from N(1, 0.02)), and the statistics are computed in float32 under mixed
  precision. *Why a window >= the map is GroupNorm(C / G groups)*: the clamped box is then the
  whole map, B gives one cell, and U of one cell is that constant; so mu is the mean over the
  group's G channels and all H W pixels, and sigma^2 = mean over pixels of the mean over channels
  of (x - mu)^2 = the biased variance over the same G H W values: exactly GroupNorm's statistics
  (same eps inside the square root, per-channel affine after).
- Window rule. A layer of total stride s gets the window ``W / (2 s)`` (:func:`lfn_window`), so
  every box covers W / 2 image pixels [ICCV19 decoder; spec]. ICCV19's decoder follows it at every
  layer (W / 32 at the stride-16 residual blocks); its encoder uses W/2, W/4, the default 32, W/8,
  W/16 at strides 1, 2, 4, 8, 16. We use the rule everywhere [design].
- :class:`StyleEncoder` E [ECCV18]: 3 x 3 convolutions with strides 1, 2, 2, ..., channels
  ngf * [1, 1, 2, 4, 8, ...], each followed by the norm and ReLU. ECCV18 reflect-pads the image by
  15 once and uses VALID convolutions; that yields exactly side / 16 for 4 downsamplings (768 ->
  48) but not for other depths (64 px with 3 downsamplings gives 10, not 8). Here every
  convolution reflect-pads by 1 [design], so the output side is exactly side / 2^d for any side
  that is a multiple of 2^d, and features stay centred on their pixels: the same weights run at
  64 px (training) and 256 px (stylization). ECCV18 also instance-normalizes the input image first
  (``input_norm=True`` gives that layer; off by default, as in the spec's E).
- :class:`ContentTransformBlock` T: ``blocks`` residual blocks x + a(n(conv(a(n(conv(x)))))), a =
  LeakyReLU 0.2 [spec, from third-party notes: **[unverified]**; ICCV19's decoder blocks have the
  same form with a transposed second convolution]. Starts as the identity [spec]: the last norm's
  gamma (and beta) of every block are 0, so each branch is LeakyReLU(0) = 0 and T(z) == z exactly.
- :class:`StyleDecoder` D [ECCV18]: ``res_blocks`` residual blocks of ECCV18's form x +
  n(conv(relu(n(conv(x))))), then per downsampling nearest x 2, conv 3 x 3, norm, ReLU with the
  encoder's channels mirrored (ngf * [..., 4, 2, 1]), then reflect-pad 3, conv 7 x 7 and
  sigmoid * 2 - 1, so outputs lie in [-1, 1] (images [0, 1] are mapped to [-1, 1] by the method).
  ECCV18 zero-pads the upsampling convolutions (SAME); here they reflect-pad [design].
- :class:`StyleDiscriminator` D_s [ECCV18]: stride-2 5 x 5 convolutions, instance norm, LeakyReLU
  0.2, 1-channel real/fake maps at several levels (ECCV18: 7 levels of df * [2, 2, 4, 8, 8, 16, 16]
  channels, df = 64, maps at levels 0, 1, 3, 5, 6 from 5 / 10 / 10 / 6 / 3 kernels, on 768-px
  crops). Here: maps from the last ``score_levels`` levels (or the given level indices) through
  3 x 3 convolutions [design]; a scene head (global average pool of the deepest features, linear)
  [paper: D_s has a scene head; its form is **[design]**].
- :class:`ContentDiscriminator` D_c [paper: works on features, two heads, artwork / photo and
  object class c; everything else **[design]**]: two 3 x 3 convolutions with LeakyReLU 0.2, global
  average pool, two linear heads.
- :class:`WinRate` [ECCV18 ``model.py``]: ds = dsr at the start (0.8), alpha = 0.05; step G when
  ds >= dsr, then ds <- (1 - alpha) ds + alpha (1 - gen_acc); else step D, then
  ds <- (1 - alpha) ds + alpha disc_acc. ECCV18 reads the accuracy from the same session run as
  the step, i.e. from the forward pass before the update.
- Losses and accuracies, per sample (N) so a caller can take a global mean over workers:
  :func:`multiscale_bce` (each map's mean BCE, summed over maps [ECCV18]), :func:`pooled_mse`
  (ECCV18's "transformer block": 10 x 10 average pooling, stride 1, TF SAME padding that leaves
  the padding out of the count, then the MSE; pool 1 is the poster's plain L2),
  :func:`feature_l1` (ECCV18's fixpoint loss) and :func:`feature_mse` (the poster's),
  :func:`adversarial_accuracy` (ECCV18's per-map shares averaged over maps and sources; ECCV18
  compares logits with 0.5, here with ``threshold=0`` = probability 0.5 [design]).

The plain :mod:`~reprlab.platform.nn.gan` helpers assume one logit per sample; the multi-scale maps
here need their own BCE and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("lfn", "instance")
LEAK = 0.2
# D_s for 64-px crops on a CPU: 5 levels (32, 16, 8, 4, 2 px), ECCV18's width ratios 2:2:4:8:8
DEFAULT_DISC_WIDTHS = (16, 16, 32, 64, 64)
# ECCV18 (df = 64, 768-px crops, maps at levels 0, 1, 3, 5, 6)
PAPER_DISC_WIDTHS = (128, 128, 256, 512, 512, 1024, 1024)
PAPER_SCORE_LEVELS = (0, 1, 3, 5, 6)


def lfn_window(W: int, stride: int) -> int:
    """The LFN window at a layer of total stride ``stride``: W / (2 stride) feature cells, i.e.
    W / 2 image pixels (at least 1)."""
    return max(1, W // (2 * stride))


class LocalGroupNorm(nn.Module):
    """LFN: group normalization with statistics from a box of ``window`` x ``window`` cells around
    each position (see the module docstring). ``window=None`` uses the whole map (GroupNorm with
    ``channels // group_size`` groups); N x C x H x W -> the same shape."""

    def __init__(self, channels: int, group_size: int = 32, window: int | None = 32, eps: float = 1e-5,
                 affine: bool = True) -> None:
        super().__init__()
        if group_size < 1 or channels < 1 or channels % group_size:
            raise ValueError(f"LocalGroupNorm: channels ({channels}) must be a positive multiple of group_size "
                             f"({group_size}); group_size is the number of channels per group, not the group count")
        if window is not None and window < 1:
            raise ValueError(f"LocalGroupNorm: window must be >= 1 or None, got {window}")
        self.channels, self.group_size, self.window, self.eps = channels, group_size, window, eps
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return (f"{self.channels}, group_size={self.group_size}, window={self.window}, eps={self.eps}, "
                f"affine={self.weight is not None}")

    def _box(self, m: torch.Tensor) -> torch.Tensor:
        """Box filter (clamped window, stride max(1, w // 2), VALID), resized bilinearly back."""
        h, w = m.shape[-2:]
        kh, kw = (h, w) if self.window is None else (min(self.window, h), min(self.window, w))
        pooled = F.avg_pool2d(m, (kh, kw), stride=(max(1, kh // 2), max(1, kw // 2)))
        if pooled.shape[-2:] == (h, w):  # window 1: the box is the cell itself
            return pooled
        return F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"LocalGroupNorm: expected {self.channels} channels, got {c}")
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        groups = xf.reshape(n, c // self.group_size, self.group_size, h, w)
        mu = self._box(groups.mean(2)).unsqueeze(2)
        dev = groups - mu
        var = self._box(dev.square().mean(2)).unsqueeze(2)
        y = (dev * torch.rsqrt(var + self.eps)).reshape(n, c, h, w)
        if self.weight is not None:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def norm_layer(kind: str, channels: int, group_size: int = 32, window: int | None = 32) -> nn.Module:
    """``"lfn"``: :class:`LocalGroupNorm`; ``"instance"``: ``InstanceNorm2d(affine=True)`` (the
    ECCV18 model; ``group_size`` and ``window`` are ignored)."""
    if kind == "lfn":
        return LocalGroupNorm(channels, group_size, window)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def lfn_windows(module: nn.Module) -> list[int | None]:
    """The windows of every :class:`LocalGroupNorm` in ``module``, in order."""
    return [m.window for m in module.modules() if isinstance(m, LocalGroupNorm)]


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """k x k convolution, reflect-padded by k // 2 (no bias where a norm follows: it would cancel)."""
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, padding_mode="reflect", bias=bias)


def _conv_norm_relu(cin: int, cout: int, stride: int, kind: str, group_size: int, window: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, 3, stride), norm_layer(kind, cout, group_size, window), nn.ReLU())


class ResidualBlock(nn.Module):
    """x + a(n2(conv2(b(n1(conv1(x)))))), 3 x 3 reflect-padded convolutions. ``leak`` is the slope of
    b and a (0 = ReLU); ``final_act=False`` drops a (ECCV18's decoder block: leak 0, no final
    activation; T's block: leak 0.2 with it)."""

    def __init__(self, channels: int, kind: str, group_size: int, window: int, leak: float = LEAK,
                 final_act: bool = True) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv(channels, channels, 3), _conv(channels, channels, 3)
        self.norm1 = norm_layer(kind, channels, group_size, window)
        self.norm2 = norm_layer(kind, channels, group_size, window)
        self.leak, self.final_act = leak, final_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), self.leak)
        y = self.norm2(self.conv2(y))
        return x + (F.leaky_relu(y, self.leak) if self.final_act else y)


class StyleEncoder(nn.Module):
    """E: 3 -> ``ngf * 2**(downsamplings - 1)`` channels at 1 / 2**downsamplings of the input side.
    The paper setting [ECCV18]: ngf 32, 4 downsamplings, W 256 (LFN) or instance norm."""

    def __init__(self, ngf: int = 32, downsamplings: int = 4, *, norm: str = "lfn", group_size: int = 32,
                 W: int = 256, in_channels: int = 3, input_norm: bool = False) -> None:
        super().__init__()
        widths = [ngf] + [ngf * 2**i for i in range(downsamplings)]
        layers: list[nn.Module] = [nn.InstanceNorm2d(in_channels, affine=True)] if input_norm else []
        cin = in_channels
        for i, cout in enumerate(widths):  # layer i leaves the map at total stride 2**i
            layers.append(_conv_norm_relu(cin, cout, 1 if i == 0 else 2, norm, group_size, lfn_window(W, 2**i)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.multiple = 2**downsamplings

    @property
    def windows(self) -> list[int | None]:
        return lfn_windows(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"StyleEncoder: input sides {tuple(x.shape[-2:])} must be multiples of {self.multiple}")
        return self.layers(x)


class ContentTransformBlock(nn.Module):
    """T at the bottleneck (total stride ``stride``): ``blocks`` residual blocks of (conv 3 x 3,
    norm, LeakyReLU 0.2) x 2, the identity at initialization; ``blocks=0`` is the identity (the
    model without T). The paper setting: 9 blocks [spec, **[unverified]**]."""

    def __init__(self, channels: int, blocks: int = 9, *, norm: str = "lfn", group_size: int = 32, W: int = 256,
                 stride: int = 16) -> None:
        super().__init__()
        window = lfn_window(W, stride)
        self.blocks = nn.Sequential(*(ResidualBlock(channels, norm, group_size, window) for _ in range(blocks)))
        self.identity_init_()

    @torch.no_grad()
    def identity_init_(self) -> None:
        """Zero the last norm's scale and shift of every block, so each branch is exactly 0."""
        for block in self.blocks:
            block.norm2.weight.zero_()
            block.norm2.bias.zero_()

    @property
    def windows(self) -> list[int | None]:
        return lfn_windows(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)


class StyleDecoder(nn.Module):
    """D: the encoder's output (``ngf * 2**(downsamplings - 1)`` channels) -> 3 channels in [-1, 1]
    at 2**downsamplings times the side. The paper setting [ECCV18]: ngf 32, 4 downsamplings, 9
    residual blocks."""

    def __init__(self, ngf: int = 32, downsamplings: int = 4, res_blocks: int = 9, *, norm: str = "lfn",
                 group_size: int = 32, W: int = 256, out_channels: int = 3) -> None:
        super().__init__()
        d = downsamplings
        cin = ngf * 2 ** max(d - 1, 0)
        self.in_channels = cin
        window = lfn_window(W, 2**d)
        self.blocks = nn.Sequential(*(ResidualBlock(cin, norm, group_size, window, leak=0.0, final_act=False)
                                      for _ in range(res_blocks)))
        ups: list[nn.Module] = []
        for i in range(d):  # after upsampling i the total stride is 2**(d - 1 - i)
            cout = ngf * 2 ** (d - 1 - i)
            ups += [nn.Upsample(scale_factor=2, mode="nearest"),
                    _conv_norm_relu(cin, cout, 1, norm, group_size, lfn_window(W, 2 ** (d - 1 - i)))]
            cin = cout
        self.ups = nn.Sequential(*ups)
        self.head = _conv(cin, out_channels, 7, bias=True)

    @property
    def windows(self) -> list[int | None]:
        return lfn_windows(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.ups(self.blocks(z)))) * 2.0 - 1.0


class StyleDiscriminator(nn.Module):
    """D_s: ``len(widths)`` levels of [conv 5 x 5 stride 2, instance norm (optionally not on the
    first level), LeakyReLU 0.2]; 1-channel real/fake logit maps from the last ``score_levels``
    levels (an int) or from the given level indices (0 = the first; ECCV18's are
    :data:`PAPER_SCORE_LEVELS` with :data:`PAPER_DISC_WIDTHS` at 768 px); a scene head over the
    deepest level (none when ``scenes=0``). ``forward(x) -> (maps, scene logits N x scenes | None)``,
    maps ordered from fine to coarse."""

    def __init__(self, widths: Sequence[int] = DEFAULT_DISC_WIDTHS, score_levels: int | Sequence[int] = 3,
                 scenes: int = 0, *, in_channels: int = 3, norm_first: bool = True) -> None:
        super().__init__()
        levels = len(widths)
        if isinstance(score_levels, int):
            if not 1 <= score_levels <= levels:
                raise ValueError(f"score_levels must be in 1..{levels}, got {score_levels}")
            at = list(range(levels - score_levels, levels))
        else:
            at = sorted(set(score_levels))
            if not at or at[0] < 0 or at[-1] >= levels:
                raise ValueError(f"score levels {list(score_levels)} must be indices in 0..{levels - 1}")
        self.score_at = at
        self.levels = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            normed = norm_first or i > 0
            self.levels.append(nn.Sequential(nn.Conv2d(cin, w, 5, 2, padding=2, bias=not normed),
                                             nn.InstanceNorm2d(w, affine=True) if normed else nn.Identity(),
                                             nn.LeakyReLU(LEAK)))
            cin = w
        self.scores = nn.ModuleList(nn.Conv2d(widths[i], 1, 3, padding=1) for i in at)
        self.scene = nn.Linear(widths[-1], scenes) if scenes else None

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        maps: list[torch.Tensor] = []
        heads = iter(self.scores)
        for i, level in enumerate(self.levels):
            x = level(x)
            if i in self.score_at:
                maps.append(next(heads)(x))
        logits = self.scene(x.mean((2, 3))) if self.scene is not None else None
        return maps, logits


class ContentDiscriminator(nn.Module):
    """D_c on encoder features (**[design]**): conv 3 x 3, LeakyReLU 0.2, conv 3 x 3, LeakyReLU 0.2,
    global average pool, then an artwork (1) / photo (0) logit and object-class logits (none when
    ``classes=0``). ``forward(z) -> (logit N, class logits N x classes | None)``."""

    def __init__(self, channels: int, classes: int = 2, width: int | None = None) -> None:
        super().__init__()
        width = width or channels
        self.body = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(LEAK),
                                  nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(LEAK))
        self.real = nn.Linear(width, 1)
        self.classes = nn.Linear(width, classes) if classes else None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body(z).mean((2, 3))
        return self.real(h)[:, 0], (self.classes(h) if self.classes is not None else None)


class WinRate(nn.Module):
    """ECCV18's running discriminator success rate ``ds`` (a float64 buffer, so a checkpoint holds
    it) deciding whether G or D steps. Every rank must pass the same, already all-reduced
    accuracies, so that every rank takes the same branch (otherwise DDP deadlocks)."""

    def __init__(self, rate: float = 0.8, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= rate <= 1.0 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"WinRate: rate must be in [0, 1] and alpha in (0, 1], got {rate}, {alpha}")
        self.rate, self.alpha = rate, alpha
        self.register_buffer("ds", torch.tensor(float(rate), dtype=torch.float64))

    def choose(self) -> str:
        return "generator" if float(self.ds) >= self.rate else "discriminator"

    def _move(self, target: float) -> None:
        self.ds.fill_((1.0 - self.alpha) * float(self.ds) + self.alpha * target)

    def after_generator(self, gen_acc: float) -> None:
        """After a G step: ds <- (1 - alpha) ds + alpha (1 - gen_acc)."""
        self._move(1.0 - _accuracy(gen_acc))

    def after_discriminator(self, disc_acc: float) -> None:
        """After a D step: ds <- (1 - alpha) ds + alpha disc_acc."""
        self._move(_accuracy(disc_acc))

    def values(self) -> dict[str, float]:
        return {"win_rate": float(self.ds)}


def _accuracy(acc: float | torch.Tensor) -> float:
    a = float(acc)
    if not 0.0 <= a <= 1.0:  # also rejects NaN, which would pin the rule to one branch for good
        raise ValueError(f"an accuracy must be in [0, 1], got {a}")
    return a


def _share(maps: Sequence[torch.Tensor], above: bool, threshold: float) -> torch.Tensor:
    """Per sample: the share of cells above (or below) ``threshold``, averaged over the maps."""
    shares = [((m > threshold) if above else (m < threshold)).flatten(1).float().mean(1) for m in maps]
    return torch.stack(shares).mean(0)


@torch.no_grad()
def adversarial_accuracy(real_scores: Sequence[torch.Tensor], fake_scores: Sequence[torch.Tensor],
                         *more_fake_scores: Sequence[torch.Tensor], threshold: float = 0.0,
                         mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator accuracy, generator accuracy) from D_s's maps on real paintings, on
    generated images (``fake_scores``) and optionally on further fakes (photos, ECCV18's
    ``photos_as_fake``). D's accuracy is the mean over sources of each source's share of correct
    cells (real > threshold, fake < threshold; each map's share averaged over maps, then ``mean``
    over samples): ECCV18's (painting + photo + output) / 3 when called as
    ``(paintings, outputs, photos)``. G's accuracy: the share of generated cells > threshold.
    ``mean`` reduces per-sample values (e.g. a global mean over workers)."""
    sources = [_share(real_scores, True, threshold)] + [_share(f, False, threshold)
                                                        for f in (fake_scores, *more_fake_scores)]
    disc = torch.stack([mean(s) for s in sources]).mean()
    return disc, mean(_share(fake_scores, True, threshold))


def multiscale_bce(maps: Sequence[torch.Tensor], real: bool) -> torch.Tensor:
    """Per sample (N): each map's mean BCE-with-logits against 1 (``real``) or 0, summed over the
    maps [ECCV18: the loss of each scale's map, summed over scales]."""
    total = maps[0].new_zeros(maps[0].shape[0])
    for m in maps:
        total = total + F.softplus(-m if real else m).flatten(1).mean(1)  # -log sigmoid(+-m)
    return total


def same_avg_pool(x: torch.Tensor, pool: int) -> torch.Tensor:
    """``pool`` x ``pool`` average pooling with stride 1 and TF's SAME padding ((pool - 1) // 2
    before, the rest after), the padding left out of each cell's count (ECCV18's
    ``transformer_block``): the same size as ``x``."""
    if pool == 1:
        return x
    before = (pool - 1) // 2
    pad = (before, pool - 1 - before, before, pool - 1 - before)
    ones = x.new_ones(1, 1, *x.shape[-2:])
    count = F.avg_pool2d(F.pad(ones, pad), pool, stride=1)
    return F.avg_pool2d(F.pad(x, pad), pool, stride=1) / count


def pooled_mse(x: torch.Tensor, y: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """Per sample (N): the MSE of ``x`` and ``y`` after :func:`same_avg_pool` (pool 1: plain MSE,
    the poster's L_pxl; ECCV18 pools 10 x 10). Pooling is linear, so both are pooled as one
    difference."""
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    return same_avg_pool(x - y, pool).square().flatten(1).mean(1)


def feature_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample (N): mean |a - b| (ECCV18's fixpoint loss on encoder features)."""
    return (a - b).abs().flatten(1).mean(1)


def feature_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample (N): mean (a - b)^2 (the poster's L_FP = ||E(x^) - E(x)||^2)."""
    return (a - b).square().flatten(1).mean(1)

