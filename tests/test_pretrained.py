"""Pretrained starts: a local torchvision-format weights file initialises the backbone, and
`train --weights FILE` fine-tunes from it (weights files made here from untrained torchvision
models with their own seed; nothing is downloaded)."""
from __future__ import annotations

import pytest
import torch

from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.core.config import ModelConfig
from siamsearch.core.errors import SiamsearchError
from siamsearch.core.model import EmbeddingNet

from conftest import make_identity_folders


def _weights_file(tmp_path, name: str, seed: int = 123, wrap=None, prefix: str = ""):
    import torchvision

    torch.manual_seed(seed)
    ref = getattr(torchvision.models, name)(weights=None)
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / f"{name}.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    return path, ref


@pytest.mark.parametrize("wrap, prefix", [(None, ""), ("state_dict", "module."), ("model", "")])
def test_weights_file_wrappers_load(tmp_path, wrap, prefix):
    path, ref = _weights_file(tmp_path, "resnet18", wrap=wrap, prefix=prefix)
    net = EmbeddingNet(ModelConfig.for_channels(3, backbone="resnet18", input_size=32), weights=str(path))
    assert torch.equal(net.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(net.backbone.bn1.running_var, ref.bn1.running_var)


def test_grey_model_sums_the_rgb_stem(tmp_path):
    path, ref = _weights_file(tmp_path, "resnet18")
    net = EmbeddingNet(ModelConfig.for_channels(1, backbone="resnet18", input_size=32), weights=str(path))
    assert torch.allclose(net.backbone.conv1.weight, ref.conv1.weight.sum(dim=1, keepdim=True))


def test_classifier_of_another_size_is_dropped(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None, num_classes=10575)  # e.g. a CASIA-WebFace classifier
    path = tmp_path / "face.pth"
    torch.save(ref.state_dict(), path)
    net = EmbeddingNet(ModelConfig.for_channels(3, backbone="resnet18", input_size=32), weights=str(path))
    assert torch.equal(net.backbone.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_weights_of_another_architecture_are_refused(tmp_path):
    cfg = ModelConfig.for_channels(3, backbone="resnet18", input_size=32)
    r34, _ = _weights_file(tmp_path, "resnet34")  # same key names and shapes as resnet18, plus more blocks
    with pytest.raises(SiamsearchError, match="does not fit resnet18: .*tensors it does not have"):
        EmbeddingNet(cfg, weights=str(r34))
    r50, _ = _weights_file(tmp_path, "resnet50")
    with pytest.raises(SiamsearchError, match="does not fit resnet18: .*another shape"):
        EmbeddingNet(cfg, weights=str(r50))
    junk = tmp_path / "junk.pth"
    torch.save({"lr": 0.1}, junk)
    with pytest.raises(SiamsearchError, match="no state dict of tensors"):
        EmbeddingNet(cfg, weights=str(junk))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(SiamsearchError, match="cannot read it"):
        EmbeddingNet(cfg, weights=str(text))


def _fine_tune(tmp_path, backbone: str, input_size: int = 32):
    """Train briefly from a weights file with the faces preset; return (checkpoint, the file's reference model)."""
    from siamsearch.training.trainer import train

    data = make_identity_folders(tmp_path / "faces", n_ids=6, per_id=4, size=input_size, mode="RGB")
    path, ref = _weights_file(tmp_path, backbone)
    out = tmp_path / "ft.pt"
    train(data, out, preset="faces", backbone=backbone, weights=str(path), input_size=input_size, in_channels=3, embedding_dim=16,
          epochs=1, batch_size=8, m_per_class=2, steps_per_epoch=2, lr=1e-4, val_fraction=0.34, seed=0,
          device="cpu", progress=False)
    return load_checkpoint(out), ref


def _distance_from_file(ck, ref, key: str) -> tuple[float, float]:
    """(|trained - file|, |fresh init - file|) for one backbone tensor."""
    trained = ck.state_dict["backbone." + key]
    torch.manual_seed(0)
    fresh = EmbeddingNet(ck.config).state_dict()["backbone." + key]
    file_w = ref.state_dict()[key]
    return float((trained - file_w).norm()), float((fresh - file_w).norm())


def _check_started_from_file(tmp_path, backbone: str, key: str):
    ck, ref = _fine_tune(tmp_path, backbone)
    assert ck.card["preset"] == "faces" and ck.config.backbone == backbone
    assert ck.card["hyperparameters"]["weights"].endswith(f"{backbone}.pth")
    moved, fresh = _distance_from_file(ck, ref, key)
    # two small steps move the weights a little away from the file; an unloaded file would leave them
    # at an unrelated random init, as far from the file as a fresh network is
    assert 0 < moved < 0.05 * fresh


def test_train_fine_tunes_resnet18_from_a_weights_file(tmp_path):
    _check_started_from_file(tmp_path, "resnet18", "layer3.0.conv1.weight")


@pytest.mark.slow
@pytest.mark.parametrize("backbone, key", [("resnet50", "layer3.0.conv2.weight"),
                                           ("efficientnet_b0", "features.4.0.block.1.0.weight")])
def test_train_fine_tunes_bigger_backbones_from_a_weights_file(tmp_path, backbone, key):
    _check_started_from_file(tmp_path, backbone, key)
