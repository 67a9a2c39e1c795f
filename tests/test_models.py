import pytest
import torch

from reprlab.platform.core.config import ModelSection
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.nn.backbones import EmbeddingHead, EmbeddingNet, build_backbone


def _net(**kw):
    cfg = ModelSection(**kw)
    bb = build_backbone(cfg)
    return EmbeddingNet(bb, {"embed": EmbeddingHead(bb.out_dim, cfg.embed_dim)})


def test_frozen_batchnorm_stays_frozen_in_training():
    net = _net(backbone="resnet18", embed_dim=8).train()
    bn = net.backbone.net.bn1
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert not bn.training and torch.equal(before, bn.running_mean)
    assert not any(p.requires_grad for p in bn.parameters())
    assert net.backbone.net.conv1.weight.requires_grad


def test_small_cnn_trains_its_batchnorm_by_default():
    net = _net(backbone="small_cnn", width=4, embed_dim=8).train()
    assert any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_embeddings_are_unit_length():
    out = _net(backbone="small_cnn", width=4, embed_dim=8)(torch.randn(5, 3, 16, 16))
    assert out["embed"].shape == (5, 8) and out["features"].shape == (5, 32)
    assert torch.allclose(out["embed"].norm(dim=1), torch.ones(5), atol=1e-5)


def test_local_weights_file_is_loaded(tmp_path):
    import torchvision

    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    bb = build_backbone(ModelSection(backbone="resnet18", pretrained=str(path)))
    assert torch.equal(bb.net.conv1.weight, src.conv1.weight)


def test_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone(ModelSection(backbone="resnet18", pretrained=str(tmp_path / "none.pth")))


def test_headless_or_wrapped_weights_load_and_wrong_arch_is_one_line(tmp_path):
    import torchvision

    from reprlab.platform.core.errors import CheckpointError

    src = torchvision.models.resnet18(weights=None)
    headless = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": headless}, tmp_path / "ddp.pth")
    bb = build_backbone(ModelSection(backbone="resnet18", pretrained=str(tmp_path / "ddp.pth")))
    assert torch.equal(bb.net.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    with pytest.raises(CheckpointError, match="does not fit resnet50") as err:
        build_backbone(ModelSection(backbone="resnet50", pretrained=str(tmp_path / "ddp.pth")))
    assert "\n" not in str(err.value)
