"""A Content Transformation Block for Image Style Transfer (Kotovenko, Sanakoyeu, Ma, Lang, Ommer,
CVPR 2019; specs/style_transfer.md). One model per artist (``method.artist``); the paper's body could
not be read and no code was published: the algorithm box is the poster's, the networks and the
win-rate rule are its predecessor's (ECCV'18 adaptive style transfer), LFN is the group's ICCV'19
code, and what neither fixes is ours (docs/DEPARTURES.md, "style_transfer").

With E the encoder, T the content transformation block, D the decoder, D_s the style
discriminator (real/fake maps at several scales + a scene head), D_c the content discriminator
(artwork/photo logit + object-class head on encoder features), x a batch of photos (scene s,
object class c) and y a batch of the artist's paintings drawn with the same object classes:

    x^ = D(T(E(x)))
    step 1 (every call; T in the path, not stepped), G or D by the running win rate ds_1:
      G:  E, D <- lam_pxl pooled_mse(x^, x) + lam_fp |E(x^) - E(x)|^2 + lam_adv BCE(D_s(x^), real)
                  + lam_scene CE(scene(x^), s)
      D:  D_s  <- BCE(D_s(y), real) + BCE(D_s(x^), fake) [+ BCE(D_s(x), fake): photos_as_fake]
                  + CE(scene(y), s_y) + CE(scene(x), s)          (the scene head learns on real images)
    step 2 (every ``step2_every`` calls, if T exists; E, D, D_s frozen), G or D by ds_2:
      G:  T    <- lam_cont BCE(D_c(T(E(x))), artwork) + lam_class CE(class(T(E(x))), c)
                  + lam_adv BCE(D_s(D(T(E(x)))), real)
      D:  D_c  <- BCE(D_c(E(y)), artwork) + BCE(D_c(T(E(x))), photo) + CE(class(E(y)), c_y)

Each step's choice follows ECCV'18's rule (:class:`~reprlab.platform.nn.stylenet.WinRate`): G when
ds >= dsr, then ds <- (1 - a) ds + a (1 - G's accuracy); else D, then ds <- (1 - a) ds + a D's
accuracy. The accuracies are of the global batch (gathered), so every rank takes the same branch.
Frozen modules in a path run unwrapped (no DDP hooks) and their stale gradients are cleared before
their own updates. T starts as the identity.

Models (``method.model``): ``trained`` (the above; ``ctb_blocks: 0`` = no T and no step 2, the
ECCV'18 model; ``norm: instance | lfn``), and the evaluation-only baselines ``identity``,
``color_transfer`` (each photo's Lab mean and std moved to the artist's paintings') and ``oracle``
(the artist's own rendering G_a(x)).

Evaluation (rank 0, broadcast) with the frozen judge of ``method.judge`` (a finished
``style_judge`` run, stored in this run's checkpoints): ``deception`` (the judge's artist head names
the artist), ``deception_artists_only`` (argmax over the artists only: the paper's form),
``deception_hd`` (the held-out photo stylized at ``hd_side`` px, judged on training-size tiles: the
LFN claim), ``alteration_face`` / ``alteration_unseen`` (the judge's altered-object head says
"changed as this artist changes it" on crops with a face / an unseen object: the CTB claim),
``rsscd`` (distance of the judge features of x^ to those of G_a(x), over the mean distance between
G_a of different crops; lower is better), ``rsscd_nn`` (as rsscd, to the nearest painting of the
artist's pool with the same object class), ``scene_acc`` (the judge's scene head still right on
x^), ``ssim_low`` (SSIM of blurred luminance, x^ against x, outside the artist's change mask), and
``score`` = the harmonic mean of deception and scene_acc (selection; copying paintings does not pay).

Real data (``data.name: style_folders``, the ``paper`` preset): photos and the artist's paintings
from folders, scored by a user-supplied artist classifier (``method.classifier``, the paper's
VGG-16 on WikiArt artists; ``method.classifier_artist`` its logit of this artist), also stored in
the checkpoints. Paintings there have no object class or scene (-1: drawn uniformly, left out of
the heads' losses), and no rendering of a photo by the artist exists, so alteration, RSSCD and
scene accuracy are NaN and ``score`` is the deception rate.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from reprlab.platform.contract.frozen import load_external_classifier, load_frozen
from reprlab.platform.contract.method import Method, register_method, unwrap
from reprlab.platform.core.config import ExperimentConfig, MethodConfig
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.log import say
from reprlab.platform.data.sets.procedural_art import art_material_of
from reprlab.platform.eval import image as im
from reprlab.platform.nn.stylenet import (
    DEFAULT_DISC_WIDTHS,
    ContentDiscriminator,
    ContentTransformBlock,
    StyleDecoder,
    StyleDiscriminator,
    StyleEncoder,
    WinRate,
    feature_l1,
    feature_mse,
    multiscale_bce,
    pooled_mse,
)

TRAINED = ("trained",)
METRICS = ("score", "deception", "deception_artists_only", "deception_hd", "alteration_face", "alteration_unseen",
           "rsscd", "rsscd_nn", "scene_acc", "ssim_low")
LOW_SIGMA = 2.0  # px: the blur before ssim_low (low frequencies only) [design]
LAB_PAINTINGS = 2048  # paintings whose Lab statistics colour transfer moves photos to
UNKNOWN = -1  # a scene or object class the data does not give (real paintings): left out of the heads' losses


class StyleTransferConfig(MethodConfig):
    name: Literal["style_transfer"] = "style_transfer"
    artist: str = Field("a", description="the artist this model paints like (one model per artist)")
    model: Literal["trained", "identity", "color_transfer", "oracle"] = "trained"
    judge: str | None = Field(None, description="a finished style_judge run directory (scores every variant)")
    classifier: str | None = Field(
        None, description="instead of a judge run: a TorchScript artist classifier (the paper: a VGG-16 on WikiArt "
                          "artists); it maps N x 3 x S x S images to artist logits")
    classifier_artist: int | None = Field(None, ge=0, description="the classifier's logit index of method.artist")
    classifier_size: int = Field(224, ge=8, description="the classifier's input side S (images are resized to it)")
    classifier_normalize: Literal["imagenet", "none"] = Field(
        "imagenet", description="imagenet: inputs standardized with the ImageNet mean and std; none: [0, 1]")
    judge_gates: tuple[float, float] = Field(
        (0.95, 0.9), description="the judge's least test painting_acc and alteration_acc/<artist> (spec: .95, .9)")
    norm: Literal["lfn", "instance"] = "lfn"
    ngf: int = Field(16, ge=4, description="E's first width (E: ngf x [1, 1, 2, 4, ...])")
    downsamplings: int = Field(3, ge=1, le=5)
    decoder_blocks: int = Field(3, ge=0, description="residual blocks at the start of D")
    ctb_blocks: int = Field(3, ge=0, description="T's residual blocks; 0: no T and no step 2 (ECCV'18)")
    group_size: int = Field(16, ge=1, description="LFN group size G (channels per group)")
    window: int = Field(32, ge=2, description="LFN's W: a layer of stride s uses a window of W / (2 s)")
    disc_widths: list[int] = Field(list(DEFAULT_DISC_WIDTHS), description="D_s: one stride-2 level per width")
    score_levels: int | list[int] = Field(
        3, description="D_s's real/fake maps: from its last this many levels, or at these level indices (0 = first)")
    content_disc_width: int | None = Field(None, ge=4, description="D_c's width (default: E's output channels)")
    pixel_weight: float = Field(100.0, ge=0, description="lam_pxl (ECCV'18: 100)")
    pixel_pool: int = Field(3, ge=1, description="average pooling before L_pxl (1: the poster's plain L2)")
    fixpoint_weight: float = Field(100.0, ge=0, description="lam_FP (ECCV'18: 100)")
    fixpoint: Literal["l2", "l1"] = Field("l2", description="l2: the poster's ||E(x^) - E(x)||^2; l1: ECCV'18")
    style_weight: float = Field(1.0, ge=0, description="lam_adv-style")
    content_weight: float = Field(1.0, ge=0, description="lam_adv-cont")
    scene_weight: float = Field(1.0, ge=0, description="lam_scene: CE of D_s's scene head on x^")
    class_weight: float = Field(1.0, ge=0, description="CE of D_c's object-class head on T(E(x))")
    photos_as_fake: bool = Field(True, description="D_s also learns photos as fakes (ECCV'18)")
    step2_every: int = Field(1, ge=1, description="step 2 (T vs D_c) every this many calls")
    win_rate: float = Field(0.8, ge=0, le=1, description="dsr: G steps while ds >= dsr (ECCV'18: 0.8)")
    win_alpha: float = Field(0.05, gt=0, le=1, description="ds's update rate (ECCV'18: 0.05)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam's betas (ours; ECCV'18: TF defaults)")
    figure_rows: int = Field(2, ge=0, description="test crops per object kind in stylizations.png")

    def check_against(self, cfg: ExperimentConfig) -> None:
        if self.judge is None and self.classifier is None:
            raise ConfigError("config: method.judge: a finished style_judge run is needed to score the outputs "
                              "(reprlab train style_judge/procedural_art --output runs/procedural_art/judge), "
                              "or method.classifier")
        if self.judge is not None and self.classifier is not None:
            raise ConfigError("config: method.classifier: set method.judge or method.classifier, not both")
        if cfg.data.name == "procedural_art":
            from reprlab.platform.data.sets.procedural_art import ARTISTS

            if self.artist not in ARTISTS:
                raise ConfigError(f"config: method.artist: {self.artist!r} is not one of {', '.join(ARTISTS)}")
        elif cfg.data.name == "style_folders":
            folder = cfg.data.style_folders.artist
            if folder != self.artist:
                raise ConfigError(f"config: data.style_folders.artist: {folder!r} must name method.artist's folder "
                                  f"({self.artist!r}): one model per artist")
            if self.model == "oracle":
                raise ConfigError("config: method.model: oracle needs the artist's own rendering of each photo, "
                                  "which real paintings do not have")
        if self.classifier is not None:
            self.classifier = str(Path(self.classifier).expanduser().resolve())  # Ray workers may run elsewhere
            if not Path(self.classifier).is_file():
                raise ConfigError(f"config: method.classifier: {self.classifier}: no such file")
            if self.classifier_artist is None:
                raise ConfigError("config: method.classifier_artist: the classifier's logit index of "
                                  f"method.artist ({self.artist!r}) is needed")
            _checked_classifier(self)
        else:
            self.judge = str(Path(self.judge).expanduser().resolve())  # Ray workers may run elsewhere
        if self.model in TRAINED:
            side, multiple = cfg.data.image_size, 2**self.downsamplings
            if side % multiple:
                raise ConfigError(f"config: data.image_size: {side} is not a multiple of 2^method.downsamplings = {multiple}")
            width = self.ngf * 2 ** max(0, self.downsamplings - 1)
            if width % self.group_size or self.ngf % self.group_size:
                raise ConfigError(f"config: method.group_size: {self.group_size} must divide every width of E "
                                  f"(method.ngf={self.ngf} ... {width})")
            levels = self.score_levels
            if isinstance(levels, int) and not 1 <= levels <= len(self.disc_widths):
                raise ConfigError(f"config: method.score_levels: {levels} maps need as many levels of "
                                  f"method.disc_widths ({len(self.disc_widths)})")
            if isinstance(levels, list) and (not levels or min(levels) < 0 or max(levels) >= len(self.disc_widths)):
                raise ConfigError(f"config: method.score_levels: {levels} must be level indices in "
                                  f"0..{len(self.disc_widths) - 1} (method.disc_widths)")
        if self.judge is not None:
            _gated_judge(self, cfg)


def _gated_judge(c: StyleTransferConfig, cfg: ExperimentConfig) -> Path:
    """The judge run, checked: a style_judge run on the same artists whose test accuracies pass
    ``judge_gates`` (one ConfigError line otherwise)."""
    from reprlab.platform.contract.frozen import run_config

    run, judge_cfg = run_config(c.judge, "method.judge")
    if judge_cfg.method.name != "style_judge":
        raise ConfigError(f"config: method.judge: {run} is a {judge_cfg.method.name} run, not a style_judge run")
    test = json.loads((run / "summary.json").read_text()).get("test", {})
    for key, gate in zip(("painting_acc", f"alteration_acc/{c.artist}"), c.judge_gates):
        value = test.get(key)
        if value is None or not value >= gate:
            raise ConfigError(f"config: method.judge: {run}: test {key} {value} is below the gate {gate} "
                              f"(method.judge_gates; artist a's alteration stayed below 0.9 with every judge tried, "
                              f"docs/BENCHMARKS.md (n))")
    return run


def _checked_classifier(c: StyleTransferConfig):
    """The user's classifier (method.classifier), loaded and checked to have the logit
    method.classifier_artist (one ConfigError line otherwise)."""
    model = load_external_classifier(c.classifier, "method.classifier", c.classifier_size, c.classifier_normalize)
    classes = model.scores(torch.zeros(1, 3, c.classifier_size, c.classifier_size))["artist"].shape[1]
    if c.classifier_artist >= classes:
        raise ConfigError(f"config: method.classifier_artist: {c.classifier_artist} is not an index of the "
                          f"classifier's {classes} logits")
    return model


def to_net(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


def from_net(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def color_transfer(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Each image's Lab mean and std per channel moved to ``mean`` / ``std`` (Reinhard et al.'s
    colour transfer in Lab; N x 3 x H x W in [0, 1])."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(x.permute(0, 2, 3, 1).double().numpy(), channel_axis=-1)
    m, s = lab.mean((1, 2), keepdims=True), lab.std((1, 2), keepdims=True) + 1e-6
    with warnings.catch_warnings():  # colours outside sRGB are clipped, as intended
        warnings.filterwarnings("ignore", "Conversion from CIE-LAB", UserWarning)
        out = lab2rgb((lab - m) / s * std + mean, channel_axis=-1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().clamp(0, 1)


def lab_statistics(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The mean over images of each image's Lab mean and std per channel."""
    from skimage.color import rgb2lab

    lab = rgb2lab(x.permute(0, 2, 3, 1).double().numpy(), channel_axis=-1)
    return lab.mean((1, 2)).mean(0), lab.std((1, 2)).mean(0)


def _gauss_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_low(out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: SSIM of the blurred luminance of ``out`` and ``x`` (N x 3 x H x W in [0, 1]),
    averaged over the pixels outside ``mask`` (N x H x W bool) where the SSIM map is defined (NaN
    where none is). The blur (Gaussian, sigma 2, radius 6) and the SSIM window (radius 5) let a
    change inside the mask reach up to 11 px beyond it [design: the mask is not grown, so that
    crops with an object keep pixels to score]."""
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    a = _gauss_blur((out * luma).sum(1, keepdim=True), LOW_SIGMA)
    b = _gauss_blur((x * luma).sum(1, keepdim=True), LOW_SIGMA)
    s = im.ssim_map(a, b)[:, 0]  # N x h' x w' (cropped by the window radius)
    r = (mask.shape[-1] - s.shape[-1]) // 2
    keep = ~mask[:, r : r + s.shape[-2], r : r + s.shape[-1]]
    count = keep.flatten(1).sum(1)
    return torch.where(count > 0, (s * keep).flatten(1).sum(1) / count.clamp(min=1), float("nan"))


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


@register_method
class StyleTransfer(Method):
    name = "style_transfer"
    description = "Style transfer with a content transformation block and LFN (CVPR 2019), one model per artist"
    Config = StyleTransferConfig
    selection_metric = headline_metric = "score"
    lower_is_better = frozenset({"rsscd", "rsscd_nn"})

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        return frozenset({"labels", "metadata"})

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        return METRICS

    # ---- build ----------------------------------------------------------------------------------
    def build(self) -> None:
        c, ctx = self.cfg, self.ctx
        self.material, self.paint, artists, scenes = art_material_of(ctx.cfg)
        if c.artist not in artists:
            raise ConfigError(f"config: method.artist: {c.artist!r} is not one of {', '.join(artists)}")
        if c.classifier is not None:  # the paper's form: a user's artist classifier, all logits artists
            judge = _checked_classifier(c)
            self.artist_index, self.artist_columns = c.classifier_artist, slice(None)
        else:  # a style_judge run: K artists + photo, and its altered / scene heads and features
            judge, _ = load_frozen(_gated_judge(c, ctx.cfg), "method.judge", ("style_judge",))
            if not hasattr(judge, "scores") or judge.head.altered.out_features != len(artists):
                raise ConfigError(f"config: method.judge: {c.judge} was not trained on this data set's artists")
            self.artist_index, self.artist_columns = artists.index(c.artist), slice(None, -1)
        self.judge = judge.to(ctx.device)  # an attribute: stored in (and restored from) every checkpoint
        self.content = self.material.pool("content")
        self.paintings = self.material.paintings(c.artist)
        self.calls = 0
        self._eval: dict[str, Any] = {}
        self.enc = self.ctb = self.dec = self.disc_style = self.disc_content = None
        if c.model not in TRAINED:
            return
        torch.manual_seed(ctx.cfg.experiment.seed)  # identical initial weights on every rank
        lfn = {"norm": c.norm, "group_size": c.group_size, "W": c.window}
        enc = StyleEncoder(c.ngf, c.downsamplings, **lfn)
        ctb = ContentTransformBlock(enc.out_channels, c.ctb_blocks, stride=2**c.downsamplings, **lfn) if c.ctb_blocks else None
        dec = StyleDecoder(c.ngf, c.downsamplings, c.decoder_blocks, **lfn)
        d_s = StyleDiscriminator(c.disc_widths, c.score_levels, len(scenes))
        d_c = ContentDiscriminator(enc.out_channels, 2, c.content_disc_width) if ctb is not None else None
        if ctx.is_main:
            count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
            say(f"[reprlab] style_transfer (artist {c.artist}, {c.norm}, {c.ctb_blocks} CTB blocks): E {count(enc):,}, "
                f"T {count(ctb):,}, D {count(dec):,}, D_s {count(d_s):,}, D_c {count(d_c):,} parameters")
        self.enc, self.dec, self.disc_style = ctx.prepare(enc), ctx.prepare(dec), ctx.prepare(d_s)
        lr = ctx.cfg.optim.lr
        adam = lambda *mods: torch.optim.Adam([p for m in mods for p in m.parameters()], lr=lr, betas=c.betas)  # noqa: E731
        self.opt_gen = adam(self.enc, self.dec)
        self.opt_style = adam(self.disc_style)
        self.rate_style = WinRate(c.win_rate, c.win_alpha)
        if ctb is not None:
            self.ctb, self.disc_content = ctx.prepare(ctb), ctx.prepare(d_c)
            self.opt_ctb, self.opt_content = adam(self.ctb), adam(self.disc_content)
            self.rate_content = WinRate(c.win_rate, c.win_alpha)

    # ---- batches --------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return self.ctx.iterations_per_epoch() if self.enc is not None else 0

    def images_per_step(self) -> int:
        return 2 * self.ctx.local_batch()

    def _global_batch(self, epoch: int, iteration: int) -> dict[str, torch.Tensor]:
        """Photos and paintings at (epoch, iteration), the same on every rank: class-matched where
        the object classes are known (procedural art), uniform where not (folders: -1, ignored by
        the class and scene heads)."""
        from reprlab.platform.data.sets.procedural_art import class_matched

        n = self.ctx.cfg.data.global_batch
        gen = torch.Generator().manual_seed(self.ctx.seed(epoch, iteration, 0x57F))
        photos = self.content[torch.randint(len(self.content), (n,), generator=gen)]
        if bool((photos.obj >= 0).all()) and bool((self.paintings.obj >= 0).all()):
            paintings = self.paintings[class_matched(self.paintings.obj, photos.obj.clamp(max=1), gen)]
        else:
            paintings = self.paintings[torch.randint(len(self.paintings), (n,), generator=gen)]
        return {"x": photos.image, "y": paintings.image, "scene_x": photos.scene, "scene_y": paintings.scene,
                "class_x": photos.obj.clamp(max=1), "class_y": paintings.obj.clamp(max=1)}

    def batches(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        rows = self.ctx.share()
        for it in range(self.steps_per_epoch()):
            batch = self._global_batch(epoch, it)
            yield {k: v[rows].to(self.ctx.device) for k, v in batch.items()}

    # ---- steps ----------------------------------------------------------------------------------
    def _global(self, per_sample: torch.Tensor) -> float:
        """The global batch's mean of a per-sample statistic, identical on every rank."""
        return self.ctx.gather(per_sample.detach()).mean().item()

    def _transform(self, z: torch.Tensor, wrapped: bool) -> torch.Tensor:
        if self.ctb is None:
            return z
        return self.ctb(z) if wrapped else unwrap(self.ctb)(z)

    def train_step(self, batch) -> dict[str, float]:
        logs = self._style_step(batch)
        self.calls += 1
        if self.ctb is not None and self.calls % self.cfg.step2_every == 0:
            logs |= self._content_step(batch)
        return logs

    def _style_step(self, b) -> dict[str, float]:
        """Step 1: E and D against D_s (T in the path, frozen)."""
        c, ctx = self.cfg, self.ctx
        x, y = to_net(b["x"]), to_net(b["y"])
        if self.rate_style.choose() == "generator":
            z = self.enc(x)
            out = self.dec(self._transform(z, wrapped=False))
            fixed = unwrap(self.enc)(out)
            maps, scene = unwrap(self.disc_style)(out)
            pix = pooled_mse(out, x, c.pixel_pool)
            fp = (feature_mse if c.fixpoint == "l2" else feature_l1)(fixed, z)
            adv = multiscale_bce(maps, real=True)
            per = c.pixel_weight * pix + c.fixpoint_weight * fp + c.style_weight * adv
            per = per + c.scene_weight * F.cross_entropy(scene, b["scene_x"], reduction="none", ignore_index=UNKNOWN)
            loss = ctx.global_mean(per)
            self.opt_gen.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_gen.step()
            acc = self._global(torch.stack([(m > 0).flatten(1).float().mean(1) for m in maps]).mean(0))
            self.rate_style.after_generator(acc)
            return {"loss": loss.item(), "pixel": self._global(pix), "fixpoint": self._global(fp),
                    "adv_style": self._global(adv), "gen_acc_style": acc, "g_steps_style": 1.0}
        with torch.no_grad():
            out = unwrap(self.dec)(self._transform(unwrap(self.enc)(x), wrapped=False))
        fakes = [out, x] if c.photos_as_fake else [out]
        maps, scene = self.disc_style(torch.cat([y, *fakes]))
        n = y.shape[0]
        rows = [slice(i * n, (i + 1) * n) for i in range(1 + len(fakes))]
        loss = ctx.global_mean(multiscale_bce([m[rows[0]] for m in maps], real=True))
        for r in rows[1:]:
            loss = loss + ctx.global_mean(multiscale_bce([m[r] for m in maps], real=False))
        scene_per = F.cross_entropy(scene[rows[0]], b["scene_y"], reduction="none", ignore_index=UNKNOWN)
        if c.photos_as_fake:
            scene_per = scene_per + F.cross_entropy(scene[rows[2]], b["scene_x"], reduction="none", ignore_index=UNKNOWN)
        loss = loss + ctx.global_mean(scene_per)
        self.opt_style.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_style.step()
        shares = [torch.stack([((m[r] > 0) if i == 0 else (m[r] < 0)).flatten(1).float().mean(1) for m in maps]).mean(0)
                  for i, r in enumerate(rows)]
        acc = float(np.mean([self._global(s) for s in shares]))
        self.rate_style.after_discriminator(acc)
        return {"loss": loss.item(), "disc_acc_style": acc, "g_steps_style": 0.0}

    def _content_step(self, b) -> dict[str, float]:
        """Step 2: T against D_c (E, D and D_s frozen)."""
        c, ctx = self.cfg, self.ctx
        x, y = to_net(b["x"]), to_net(b["y"])
        with torch.no_grad():
            z, zy = unwrap(self.enc)(x), unwrap(self.enc)(y)
        if self.rate_content.choose() == "generator":
            zt = self.ctb(z)
            logit, cls = unwrap(self.disc_content)(zt)
            maps, _ = unwrap(self.disc_style)(unwrap(self.dec)(zt))
            adv = F.softplus(-logit)  # BCE against "artwork"
            per = c.content_weight * adv + c.class_weight * F.cross_entropy(cls, b["class_x"], reduction="none", ignore_index=UNKNOWN)
            per = per + c.style_weight * multiscale_bce(maps, real=True)
            loss = ctx.global_mean(per)
            self.opt_ctb.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_ctb.step()
            acc = self._global((logit > 0).float())
            self.rate_content.after_generator(acc)
            return {"loss_content": loss.item(), "adv_content": self._global(adv), "gen_acc_content": acc,
                    "g_steps_content": 1.0}
        with torch.no_grad():
            zt = unwrap(self.ctb)(z)
        n = zy.shape[0]
        logit, cls = self.disc_content(torch.cat([zy, zt]))
        per_real = F.softplus(-logit[:n]) + F.cross_entropy(cls[:n], b["class_y"], reduction="none", ignore_index=UNKNOWN)
        loss = ctx.global_mean(per_real) + ctx.global_mean(F.softplus(logit[n:]))
        self.opt_content.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_content.step()
        acc = (self._global((logit[:n] > 0).float()) + self._global((logit[n:] < 0).float())) / 2
        self.rate_content.after_discriminator(acc)
        return {"loss_content": loss.item(), "disc_acc_content": acc, "g_steps_content": 0.0}

    # ---- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))

    def epoch_metrics(self) -> dict[str, float]:
        if self.enc is None:
            return {}
        out = {"win_rate_style": float(self.rate_style.ds)}
        if self.ctb is not None:
            out["win_rate_content"] = float(self.rate_content.ds)
        return out

    # ---- stylizing ------------------------------------------------------------------------------
    @torch.no_grad()
    def stylize(self, crops, bypass: bool = False, image: torch.Tensor | None = None) -> torch.Tensor:
        """The variant's output for ``crops`` (N x 3 x H x W in [0, 1], any side that is a multiple
        of 2^downsamplings for the trained model); ``bypass``: D(E(x)), T left out; ``image``:
        ``crops.image`` when the caller has it already (folder crops decode on every read)."""
        m = self.cfg.model
        if m == "identity":
            return crops.image if image is None else image
        if m == "oracle":
            return self.paint(crops, self.cfg.artist)[0]
        if m == "color_transfer":
            if "lab" not in self._eval:  # at most LAB_PAINTINGS of the pool (a seeded choice)
                pick = torch.randperm(len(self.paintings), generator=torch.Generator().manual_seed(0))[:LAB_PAINTINGS]
                self._eval["lab"] = lab_statistics(self.paintings[pick.sort().values].image)
            return color_transfer(crops.image if image is None else image, *self._eval["lab"])
        enc, dec = unwrap(self.enc), unwrap(self.dec)
        mods = [enc, dec] + ([unwrap(self.ctb)] if self.ctb is not None else [])
        for mod in mods:
            mod.eval()
        try:
            outs = []
            bs = self.ctx.cfg.eval.batch_size
            for i in range(0, len(crops), bs):
                x = to_net(crops[i : i + bs].image if image is None else image[i : i + bs]).to(self.ctx.device)
                z = enc(x)
                outs.append(from_net(dec(z if bypass else self._transform(z, wrapped=False))).cpu())
            return torch.cat(outs)
        finally:
            for mod in mods:
                mod.train()

    @torch.no_grad()
    def _judge(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bs, parts = self.ctx.cfg.eval.batch_size, []
        for i in range(0, len(x), bs):
            parts.append({k: v.cpu() for k, v in self.judge.scores(x[i : i + bs].to(self.ctx.device)).items()})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _tiles(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x S x S -> the non-overlapping training-size tiles of every image."""
        t = self.ctx.cfg.data.image_size
        n, ch, h, w = x.shape
        x = x[..., : h - h % t, : w - w % t]
        return x.unfold(2, t, t).unfold(3, t, t).permute(0, 2, 3, 1, 4, 5).reshape(-1, ch, t, t)

    # ---- evaluation -----------------------------------------------------------------------------
    @property
    def _scored_against_renderings(self) -> bool:
        """Whether the artist's own rendering of each photo exists (procedural artists) and the
        judge has the heads that use it (a style_judge run): alteration and RSSCD."""
        return self.paint is not None and self.cfg.classifier is None

    def _reference(self, split: str) -> dict[str, Any]:
        """What does not depend on the model (computed once per split): the split's crops and,
        where renderings exist, the artist's rendering and change mask and the judge's features
        of the renderings and of the painting pool."""
        key = f"ref/{split}"
        if key not in self._eval:
            ref: dict[str, Any] = {"crops": self.material.pool(split)}
            if self._scored_against_renderings:
                painted, mask = self.paint(ref["crops"], self.cfg.artist)
                if "pool_features" not in self._eval:
                    self._eval["pool_features"] = self._judge(self.paintings.image)["features"]
                ref |= {"painted": painted, "mask": mask, "painted_features": self._judge(painted)["features"]}
            self._eval[key] = ref
        return self._eval[key]

    def evaluate(self, split: str) -> dict[str, float]:
        result = self._evaluate(split) if self.ctx.is_main else None
        return self.ctx.broadcast(result)

    def _scored(self, ref: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per crop of the split, an evaluation batch at a time (outputs are not all held): the
        judge's verdicts, features and ssim_low."""
        crops, bs, a, rich = ref["crops"], self.ctx.cfg.eval.batch_size, self.artist_index, self._scored_against_renderings
        parts = []
        for i in range(0, len(crops), bs):
            chunk = crops[i : i + bs]
            x = chunk.image
            out = self.stylize(chunk, image=x)
            j = self._judge(out)
            part = {"hit": j["artist"].argmax(1) == a, "hit_artists": j["artist"][:, self.artist_columns].argmax(1) == a}
            if "scene" in j:
                part["scene_hit"] = j["scene"].argmax(1) == chunk.scene
            mask = ref["mask"][i : i + bs] if rich else torch.zeros(len(chunk), *x.shape[-2:], dtype=torch.bool)
            part["ssim_low"] = ssim_low(out, x, mask)
            if rich:
                part["altered"], part["features"] = j["altered"][:, a] > 0, j["features"]
            parts.append(part)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _evaluate(self, split: str) -> dict[str, float]:
        ref, a = self._reference(split), self.artist_index
        crops, per = ref["crops"], self._scored(ref)
        nan = float("nan")
        deception = per["hit"].float().mean().item()
        scene_acc = per["scene_hit"].float().mean().item() if "scene_hit" in per else nan
        metrics = {
            "deception": deception, "deception_artists_only": per["hit_artists"].float().mean().item(),
            "alteration_face": nan, "alteration_unseen": nan, "rsscd": nan, "rsscd_nn": nan,
            "scene_acc": scene_acc, "ssim_low": per["ssim_low"].nanmean().item(),
            # without a scene head (a user's classifier) the score is the deception rate
            "score": harmonic(deception, scene_acc) if not math.isnan(scene_acc) else deception,
        }
        if self._scored_against_renderings:
            faces, altered = crops.obj == 1, per["altered"]
            feats, painted_feats, pool = per["features"], ref["painted_features"], self._eval["pool_features"]
            spread = torch.cdist(painted_feats, painted_feats)
            k = len(painted_feats)
            denominator = spread.sum() / max(1, k * (k - 1))
            to_own = (feats - painted_feats).norm(dim=1)
            same_class = (crops.obj.clamp(max=1)[:, None] == self.paintings.obj.clamp(max=1)[None, :])
            to_pool = torch.cdist(feats, pool).masked_fill(~same_class, float("inf")).amin(1)
            unseen = self.material.pool("unseen")
            metrics |= {
                "alteration_face": altered[faces].float().mean().item() if faces.any() else nan,
                "alteration_unseen": (self._judge(self.stylize(unseen))["altered"][:, a] > 0).float().mean().item(),
                "rsscd": (to_own.mean() / denominator).item(), "rsscd_nn": (to_pool.mean() / denominator).item(),
            }
        hd = self.stylize(self.material.pool("hd"))
        metrics["deception_hd"] = (self._judge(self._tiles(hd))["artist"].argmax(1) == a).float().mean().item()
        if split == "test":
            self._figures(crops, hd)
        return metrics

    # ---- figures (test split, rank 0) -------------------------------------------------------------
    def _figures(self, crops, hd: torch.Tensor) -> None:
        if self.ctx.run_dir is None or not self.cfg.figure_rows:
            return
        as_np = lambda v: v.permute(1, 2, 0).numpy()  # noqa: E731
        k, artist = self.cfg.figure_rows, self.cfg.artist
        cols = ["content", "stylized", "T bypassed: D(E(x))"]
        if self.paint is not None:  # faces, crops without an object, unseen objects; the artist's own rendering
            unseen = self.material.pool("unseen")
            groups = [("face", crops[torch.nonzero(crops.obj == 1).flatten()[:k]]),
                      ("no object", crops[torch.nonzero(crops.obj == 0).flatten()[:k]]), ("unseen object", unseen[:k])]
            cols += [f"artist {artist}: G_a(x)", "change mask"]
        else:
            groups = [("photo", crops[: 2 * k])]
        rows, titles = [], []
        for title, sel in groups:
            if not len(sel):
                continue
            x = sel.image
            out = self.stylize(sel, image=x)
            no_t = self.stylize(sel, bypass=True, image=x) if self.ctb is not None else out
            extra = list(zip(*self.paint(sel, artist))) if self.paint is not None else [()] * len(sel)
            for i, more in enumerate(extra):
                row = [as_np(x[i]), as_np(out[i]), as_np(no_t[i])]
                if more:
                    row += [as_np(more[0]), as_np(more[1].float()[None].expand(3, -1, -1))]
                rows.append(row)
                titles.append(title)
        self.ctx.write_artifact("stylizations.png", im.image_grid_png(rows, titles, cols))
        hd_in = self.material.pool("hd").image
        self.ctx.write_artifact("hd.png", im.image_grid_png([[as_np(v) for v in hd_in], [as_np(v) for v in hd]],
                                                            ["held-out photo", f"stylized ({self.cfg.model}, {self.cfg.norm})"],
                                                            [f"region {i + 1}" for i in range(len(hd))]))
