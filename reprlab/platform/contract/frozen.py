"""A finished run's network, frozen, for methods that build on it (IIN interprets its hidden
representation).

A method exports its trained network through ``Method.frozen_model(cfg, attributes)`` as a
:class:`FrozenModel`: ``encode(x) -> z`` always; ``decode(z) -> x`` when it has a decoder
(autoencoders); ``classify(z) -> logits`` when its output is a classifier on z. The platform finds
the run's newest checkpoint (in-process or Ray Train layout) and reads it with
``torch.load(weights_only=True)``; every problem is one :class:`ConfigError` line naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from reprlab.platform.core.config import ExperimentConfig, parse_config, read_yaml
from reprlab.platform.core.errors import ConfigError, ReprlabError

_EPOCH = re.compile(r"epoch_(\d+)")


class FrozenModel(nn.Module):
    """``encoder``: x -> z; ``decoder``: z -> x (network-input space) or None; ``head``: z ->
    class logits or None. Always in eval mode, without gradients."""

    def __init__(self, kind: str, encoder: nn.Module, decoder: nn.Module | None = None,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenModel:
        return super().train(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise ValueError(f"a {self.kind} has no decoder")
        return self.decoder(z)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ValueError(f"a {self.kind} has no classifier head")
        return self.head(z)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExternalClassifier(nn.Module):
    """A user-supplied classifier (a TorchScript file) as a frozen judge: ``scores(x)`` resizes
    images in [0, 1] (N x 3 x H x W) to ``size`` x ``size`` (bilinear, antialiased), standardizes
    them with the ImageNet statistics when ``normalize`` is ``imagenet``, and returns
    ``{"artist": logits}`` (N x classes; a model returning a tuple gives its first element).
    Its weights are part of its state dict, so a checkpoint holding it restores them."""

    def __init__(self, net: nn.Module, size: int, normalize: str = "imagenet") -> None:
        super().__init__()
        self.net, self.size, self.normalize = net, size, normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ExternalClassifier:
        self.training = False
        try:
            self.net.train(False)
        except NotImplementedError:  # a torch.export module: exported in the mode it runs in
            pass
        return self

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                align_corners=False, antialias=True)
        if self.normalize == "imagenet":
            x = (x - self.mean) / self.std
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return {"artist": out.float()}


def load_external_classifier(path: str | Path, key: str, size: int, normalize: str = "imagenet") -> ExternalClassifier:
    """The classifier in ``path``: a ``torch.export`` program (``.pt2``, saved with a dynamic batch
    dimension) or a TorchScript module (any other name), checked on one blank image: it must
    return logits 1 x classes. Every problem is one ConfigError line naming ``key``."""
    import warnings

    file = Path(path).expanduser()
    kind = "torch.export program" if file.suffix == ".pt2" else "TorchScript module"
    try:
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; users still ship it
            warnings.simplefilter("ignore", FutureWarning)
            if file.suffix == ".pt2":
                net = torch.export.load(str(file)).module()
            else:
                net = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a file that is not a model fails in many ways
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"config: {key}: {path}: not a {kind} ({type(exc).__name__}: {reason})") from None
    model = ExternalClassifier(net, size, normalize)
    try:
        logits = model.scores(torch.zeros(1, 3, size, size))["artist"]
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises is one line
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"config: {key}: {path}: fails on a 1 x 3 x {size} x {size} input "
                          f"({type(exc).__name__}: {reason})") from None
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ConfigError(f"config: {key}: {path}: returns {tuple(logits.shape)} for one image; expected 1 x classes")
    return model


def selected_checkpoint(run: Path) -> Path | None:
    """The checkpoint of the epoch the run's summary reports (``best/state.pt``), if kept."""
    path = run / "best" / "state.pt"
    return path if path.is_file() else None


def newest_checkpoint(run: Path) -> Path | None:
    """The newest ``state.pt`` of a run: in-process (``checkpoints/epoch_N``) or Ray Train
    (``ray/train/epoch_N``) layout."""
    found = [p for parent in (run / "checkpoints", run / "ray" / "train") if parent.is_dir()
             for p in parent.glob("epoch_*/state.pt") if _EPOCH.fullmatch(p.parent.name)]
    return max(found, key=lambda p: int(_EPOCH.fullmatch(p.parent.name).group(1)), default=None)


def run_config(path: str | Path, key: str) -> tuple[Path, ExperimentConfig]:
    """The resolved config of the finished run in ``path`` (``key`` names the config key that
    pointed there, for error lines)."""
    run = Path(path).expanduser().resolve()
    if not run.is_dir():
        raise ConfigError(f"config: {key}: {path}: no such run directory")
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"config: {key}: {path}: not a run directory (no config.yaml)")
    if not (run / "summary.json").is_file():
        raise ConfigError(f"config: {key}: {path}: the run has not finished (no summary.json)")
    try:
        return run, parse_config(read_yaml(run / "config.yaml"))
    except ReprlabError as exc:
        raise ConfigError(f"config: {key}: {run}/config.yaml: {exc}") from None


def load_frozen(path: str | Path, key: str, kinds: tuple[str, ...] | None = None,
                checkpoint: str = "selected") -> tuple[FrozenModel, ExperimentConfig]:
    """The frozen network of the finished run in ``path`` and that run's config. ``kinds``: the
    model kinds (e.g. ``classifier``) the caller accepts. ``checkpoint``: ``selected`` (the epoch
    the run's summary reports, ``best/state.pt``; runs from before it was kept fall back to the
    newest) or ``last`` (the newest checkpoint)."""
    from reprlab.platform.core.registry import METHODS

    run, cfg = run_config(path, key)
    ckpt = (selected_checkpoint(run) if checkpoint == "selected" else None) or newest_checkpoint(run)
    if ckpt is None:
        raise ConfigError(f"config: {key}: {run} holds no checkpoint")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        attributes = state["method"]["attributes"]
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"config: {key}: cannot read {ckpt}: {type(exc).__name__}: {reason}") from None
    try:
        model = METHODS.get(cfg.method.name).frozen_model(cfg, attributes)
    except ConfigError as exc:
        raise ConfigError(f"config: {key}: {run}: {str(exc).removeprefix('config: ')}") from None
    if kinds is not None and model.kind not in kinds:
        raise ConfigError(f"config: {key}: {run} is a {cfg.method.name} run ({model.kind}); "
                          f"expected a run of kind {' or '.join(kinds)}")
    return model, cfg


def load_weights(module: nn.Module, state: dict, what: str) -> nn.Module:
    """``state`` into ``module``; a mismatch is one ConfigError line."""
    try:
        module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    except RuntimeError as exc:
        raise ConfigError(f"{what}: the checkpoint does not fit its config ({str(exc).splitlines()[0]})") from None
    return module
