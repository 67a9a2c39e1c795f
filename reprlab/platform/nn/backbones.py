"""Backbones (ResNet-18/50 with frozen BatchNorm, a small CNN for CPU work) and embedding heads."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from reprlab.platform.core.config import ModelSection
from reprlab.platform.core.errors import CheckpointError, ConfigError


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Mark every BatchNorm frozen: eval mode (kept by EmbeddingNet.train) and no gradients."""
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.frozen = True
            bn.eval()
            for p in bn.parameters():
                p.requires_grad_(False)
    return module


def keep_frozen_batchnorm_in_eval(module: nn.Module) -> None:
    for bn in module.modules():
        if getattr(bn, "frozen", False):
            bn.eval()


class SmallCNN(nn.Module):
    """Four conv stages (stride 2 from the second on) and global average pooling."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def early_features(self, x: torch.Tensor) -> torch.Tensor:
        """The first stage's output, average-pooled (low-level appearance: colour, stroke)."""
        return F.adaptive_avg_pool2d(self.features[:3](x), 1).flatten(1)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to global average pooling (the 512/2048-d penultimate feature)."""

    def __init__(self, arch: str, weights: str) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()  # the classifier is not part of the trunk: its weights are dropped
        if weights != "none":
            state = _imagenet_state(arch) if weights == "imagenet" else _local_state(Path(weights))
            trunk = {k.removeprefix("module."): v for k, v in state.items()}
            trunk = {k: v for k, v in trunk.items() if not k.startswith("fc.")}
            _check_fits(net, trunk, f"model.pretrained: {weights} does not fit {arch}")
            net.load_state_dict(trunk)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def early_features(self, x: torch.Tensor) -> torch.Tensor:
        """``layer1``'s output, average-pooled (MIC's source of initial pseudo-labels)."""
        n = self.net
        x = n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class AlexNetTrunk(nn.Module):
    """torchvision's AlexNet up to fc7 (4096-d, after its ReLU; fc8, the classifier, is dropped),
    randomly initialized: the trunk of the 2016-2019 unsupervised-learning papers. Inputs of any
    size from 63 px (its adaptive pooling gives 6 x 6 before the fully connected layers)."""

    MIN_SIDE = 63  # smaller inputs pool to nothing before conv5's pooling

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.alexnet(weights=None)
        self.features, self.avgpool = net.features, net.avgpool
        self.fc = nn.Sequential(*list(net.classifier.children())[:-1])
        self.out_dim = net.classifier[-1].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.MIN_SIDE:
            raise ConfigError(f"config: data.image_size: alexnet needs inputs of at least {self.MIN_SIDE} px, "
                              f"got {tuple(x.shape[-2:])}")
        return self.fc(self.avgpool(self.features(x)).flatten(1))

    def early_features(self, x: torch.Tensor) -> torch.Tensor:
        """conv1's output (after its ReLU and pooling), average-pooled."""
        return F.adaptive_avg_pool2d(self.features[:3](x), 1).flatten(1)


def _check_fits(net: nn.Module, state: dict, what: str) -> None:
    """CheckpointError summarising missing, unexpected and mis-shaped keys (first of each)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [
        f"{len(keys)} {kind} key(s), e.g. {keys[0]}"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")


def _imagenet_state(arch: str) -> dict:
    import torchvision

    enum = {"resnet18": torchvision.models.ResNet18_Weights, "resnet50": torchvision.models.ResNet50_Weights}[arch]
    try:
        return enum.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as exc:  # offline, proxy, disk: say what to do instead
        raise CheckpointError(
            f"model.pretrained: could not download ImageNet weights for {arch} ({type(exc).__name__}); "
            "pass a local weights file: --set model.pretrained=/path/to/weights.pth"
        ) from None


def _local_state(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config: model.pretrained: {path}: no such file (use none, imagenet or a path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"model.pretrained: cannot read weights {path}: {exc}") from None
    return state.get("state_dict", state)


def build_backbone(cfg: ModelSection) -> nn.Module:
    if cfg.backbone == "small_cnn":
        if cfg.pretrained != "none":
            raise ConfigError("config: model.pretrained: small_cnn has no pretrained weights; use none")
        trunk: nn.Module = SmallCNN(cfg.width)
    elif cfg.backbone == "alexnet":
        if cfg.pretrained != "none":
            raise ConfigError("config: model.pretrained: alexnet is offered without pretrained weights "
                              "(unsupervised training from scratch); use none")
        trunk = AlexNetTrunk()
    else:
        trunk = ResNetTrunk(cfg.backbone, cfg.pretrained)
    freeze = cfg.freeze_bn if cfg.freeze_bn is not None else cfg.backbone != "small_cnn"
    return freeze_batchnorm(trunk) if freeze else trunk


class EmbeddingHead(nn.Module):
    """Linear projection followed by L2 normalization."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(features), dim=-1)


class EmbeddingNet(nn.Module):
    """Backbone plus named heads; ``forward`` returns ``{"features": ..., head: embedding, ...}``."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def train(self, mode: bool = True) -> EmbeddingNet:
        super().train(mode)
        keep_frozen_batchnorm_in_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return {"features": feats, **{name: head(feats) for name, head in self.heads.items()}}

    def early_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.early_features(x)


class VectorEncoder(nn.Module):
    """A backbone and a linear layer: image -> a ``dim``-vector (a classifier's or an
    autoencoder's hidden representation z)."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_dim, dim)
        self.out_dim = dim

    def train(self, mode: bool = True) -> VectorEncoder:
        super().train(mode)
        keep_frozen_batchnorm_in_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


class ConvDecoder(nn.Module):
    """z -> image: a linear layer to ``4 width`` channels at size / 8, three stride-2 transposed
    convolutions (BatchNorm, ReLU; without BatchNorm it learned shapes but not colors) and a 3 x 3
    convolution to RGB, in the network-input (normalized) space."""

    def __init__(self, dim: int, size: int, width: int = 32) -> None:
        super().__init__()
        if size % 8:
            raise ConfigError(f"config: data.image_size: the decoder needs a multiple of 8, got {size}")
        self.start = (width * 4, size // 8, size // 8)
        self.fc = nn.Linear(dim, width * 4 * (size // 8) ** 2)
        chans = [width * 4, width * 2, width, width]
        layers: list[nn.Module] = [nn.ReLU()]
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.start))
