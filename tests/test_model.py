import pytest
import torch

from siamsearch.core.config import ModelConfig
from siamsearch.core.errors import SiamsearchError
from siamsearch.core.model import EmbeddingNet


@pytest.mark.parametrize("backbone,channels,size", [
    ("smallcnn", 1, 16), ("smallcnn", 1, 28), ("smallcnn", 3, 105),
    ("resnet18", 1, 32), ("efficientnet_b0", 3, 32),
])
def test_shapes_and_unit_norm(backbone, channels, size):
    cfg = ModelConfig.for_channels(channels, backbone=backbone, input_size=size, embedding_dim=12)
    net = EmbeddingNet(cfg).eval()
    n_modules = len(list(net.modules()))
    with torch.no_grad():
        y = net(torch.randn(2, channels, size, size))
    assert y.shape == (2, 12)
    assert torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)
    assert len(list(net.modules())) == n_modules  # forward created no layers


def test_config_round_trip_and_validation():
    cfg = ModelConfig.for_channels(3, backbone="resnet34", input_size=96, embedding_dim=64, hflip=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(SiamsearchError, match="backbone"):
        ModelConfig(backbone="vgg")
    with pytest.raises(SiamsearchError, match="one value per channel"):
        ModelConfig(in_channels=3)
    with pytest.raises(SiamsearchError, match="unknown fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_local_weights_file_loads_into_resnet(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    cfg = ModelConfig.for_channels(3, backbone="resnet18", input_size=32)
    net = EmbeddingNet(cfg, weights=str(path))
    assert torch.equal(net.backbone.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    with pytest.raises(SiamsearchError, match="no such file"):
        EmbeddingNet(cfg, weights=str(tmp_path / "missing.pth"))


def test_embed_from_backbone_uses_pooled_features_and_head_only_for_the_loss():
    cfg = ModelConfig(input_size=32, embedding_dim=12, embed_from="backbone")
    net = EmbeddingNet(cfg).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        emb, proj, feats = net(x), net.project(x), net.forward_features(x)
    assert net.output_dim == net.feature_dim == 1024 and emb.shape == (3, 1024)
    assert proj.shape == (3, 12)
    assert torch.allclose(emb, feats / feats.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(proj, torch.nn.functional.normalize(net.head(feats), dim=1), atol=1e-6)
    head_cfg = ModelConfig(input_size=32, embedding_dim=12)
    head_net = EmbeddingNet(head_cfg).eval()
    head_net.load_state_dict(net.state_dict())  # same weights; only where the embedding is read differs
    with torch.no_grad():
        assert torch.allclose(head_net(x), proj, atol=1e-6)
    assert head_net.output_dim == 12


def test_embed_from_is_validated_and_omitted_from_json_at_its_default():
    with pytest.raises(SiamsearchError, match="embed_from"):
        ModelConfig(embed_from="neck")
    default = ModelConfig()
    assert "embed_from" not in default.to_dict()  # files written before the field keep their fingerprint
    assert ModelConfig.from_json(default.to_json()) == default
    other = ModelConfig(embed_from="backbone")
    assert other.to_dict()["embed_from"] == "backbone"
    assert ModelConfig.from_json(other.to_json()) == other
