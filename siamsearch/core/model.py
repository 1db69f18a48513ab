"""EmbeddingNet: the one model class that trains, indexes and verifies.

backbone (features) -> projection head (Linear to ``embedding_dim``) -> L2
normalisation; with ``config.embed_from == "backbone"`` the embedding is the
L2-normalised features and the head serves the training loss only. Every
layer, including the head's input size, is created in ``__init__`` from the
:class:`ModelConfig`; ``forward`` creates nothing.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import SiamsearchError


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A CPU-friendly backbone: 4 conv stages (32, 64, 128, 256 channels), each
    halving the resolution, then adaptive average pooling to 2x2.

    Input ``[B, C, H, W]`` (any H, W >= 16) -> features ``[B, 1024]``.
    """

    widths = (32, 64, 128, 256)

    def __init__(self, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in self.widths:
            layers += [_conv_bn_relu(cin, w), nn.MaxPool2d(2)]
            cin = w
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.out_features = self.widths[-1] * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x), 1)


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Replace a 3-channel stem conv by one taking ``in_channels`` (grey: summed RGB weights)."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


#: State-dict key prefixes of classifier heads, dropped from a weights file (the embedding head replaces them).
_HEAD_PREFIXES = ("fc.", "classifier.")

#: Wrappers around a state dict in common checkpoint files, and key prefixes of wrapped models.
_STATE_KEYS = ("state_dict", "model", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.")


def _read_state_dict(weights: str, name: str) -> dict:
    """A torchvision-format state dict from a file (``torch.save(model.state_dict())``), unwrapped:
    ``{"state_dict"|"model": ...}`` containers and ``module.``/``model.``/``backbone.`` key prefixes
    (DataParallel, Lightning) are accepted; classifier-head tensors (``fc.*``, ``classifier.*``) dropped."""
    if not os.path.isfile(weights):
        raise SiamsearchError(f"--weights {weights}: no such file; give a torchvision state dict saved with torch.save")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SiamsearchError(f"--weights {weights}: cannot read it as a torch state dict ({e})") from None
    for key in _STATE_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SiamsearchError(f"--weights {weights} holds no state dict of tensors; save one with "
                              f"torch.save(torchvision.models.{name}().state_dict(), FILE)")
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}


def _load_backbone_weights(net: nn.Module, weights: str, name: str) -> None:
    """Load a weights file into a torchvision ``name`` model; every body tensor must be there and fit."""
    state = _read_state_dict(weights, name)
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                (("missing tensors", missing), ("tensors it does not have", unexpected), ("tensors of another shape", wrong)) if v]
    if problems:
        raise SiamsearchError(
            f"--weights {weights} does not fit {name}: {'; '.join(problems)}; give weights saved from "
            f"torchvision.models.{name} (torch.save(model.state_dict(), FILE))"
        )
    net.load_state_dict(state, strict=False)  # strict apart from the classifier head, checked above


def _torchvision_backbone(name: str, in_channels: int, weights: Optional[str]) -> tuple[nn.Module, int]:
    import torchvision.models as tvm

    builder = getattr(tvm, name)
    tv_weights = None
    if weights == "imagenet":  # torchvision's pretrained-weights API; downloads on first use
        tv_weights = "DEFAULT"
    try:
        net = builder(weights=tv_weights)
    except (OSError, RuntimeError) as e:  # offline (URLError is an OSError), or a damaged download
        if tv_weights is None:
            raise
        raise SiamsearchError(
            f"--weights imagenet: cannot get torchvision's {name} weights ({type(e).__name__}: {e}). Without "
            f"internet here, save them where there is: python -c \"import torch, torchvision; "
            f"torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), '{name}.pth')\" "
            f"and pass --weights {name}.pth"
        ) from None
    if weights not in (None, "imagenet"):
        _load_backbone_weights(net, weights, name)
    if name.startswith("resnet"):
        net.conv1 = _adapt_first_conv(net.conv1, in_channels)
        dim = net.fc.in_features
        net.fc = nn.Identity()
    else:  # efficientnet
        stem = net.features[0][0]
        net.features[0][0] = _adapt_first_conv(stem, in_channels)
        dim = net.classifier[-1].in_features
        net.classifier = nn.Identity()
    return net, dim


class EmbeddingNet(nn.Module):
    """Backbone + linear projection + L2 normalisation.

    Args:
        config: architecture and input spec.
        weights: optional backbone initialisation for torchvision backbones:
            a path to a local torchvision state dict, or ``"imagenet"`` to use
            torchvision's pretrained-weights API (needs internet on first use).
            Ignored once a checkpoint's weights are loaded.

    ``forward(x)``: ``x [B, in_channels, input_size, input_size]`` float ->
    the embedding ``[B, output_dim]`` float, each row of unit L2 norm
    (``output_dim`` is ``embedding_dim``, or ``feature_dim`` when embedding
    from the backbone). ``project(x)``: the head's output ``[B, embedding_dim]``,
    unit rows; what the training losses see.
    """

    def __init__(self, config: ModelConfig, weights: Optional[str] = None):
        super().__init__()
        self.config = config
        if config.backbone == "smallcnn":
            if weights is not None:
                raise SiamsearchError("--weights applies to torchvision backbones only, not smallcnn")
            self.backbone: nn.Module = SmallCNN(config.in_channels)
            feat_dim = self.backbone.out_features
        else:
            self.backbone, feat_dim = _torchvision_backbone(config.backbone, config.in_channels, weights)
        min_size = 16 if config.backbone == "smallcnn" else 32
        if config.input_size < min_size:
            raise SiamsearchError(f"{config.backbone} needs input_size >= {min_size}, got {config.input_size}")
        self.feature_dim = feat_dim
        self.output_dim = config.embedding_dim if config.embed_from == "head" else feat_dim
        self.head = nn.Linear(feat_dim, config.embedding_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> backbone features ``[B, feature_dim]``."""
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> projection head output ``[B, embedding_dim]``, unit rows."""
        return F.normalize(self.head(self.forward_features(x)).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.embed_from == "head":
            return self.project(x)
        return F.normalize(self.forward_features(x).float(), dim=1)
