"""Inference rewrites (siamsearch.core.fusion): each keeps the network's output."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siamsearch.core.config import ModelConfig
from siamsearch.core.fusion import (ConvReLU, MaxPool2x2, _onednn_pointwise_available, fold_batchnorm,
                                    optimize_for_inference)
from siamsearch.core.model import EmbeddingNet

needs_onednn = pytest.mark.skipif(not _onednn_pointwise_available(), reason="no oneDNN pointwise convolution")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 8, 16, 16), (2, 5, 9, 12), (2, 4, 10, 7), (1, 3, 1, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_maxpool2x2_is_bit_equal_to_max_pool2d(dtype, shape, channels_last):
    x = torch.randn(*shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if min(shape[2:]) < 2:
        with pytest.raises(RuntimeError):  # the same error as max_pool2d for too small an input
            MaxPool2x2()(x)
        return
    out = MaxPool2x2()(x)
    assert torch.equal(out, F.max_pool2d(x, 2))
    if channels_last and shape[2] % 2 == 0 and shape[3] % 2 == 0:
        assert out.is_contiguous(memory_format=torch.channels_last)  # the next conv gets the layout it wants


def _conv(cin=3, cout=8, **kw):
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, 3, padding=1, **kw).eval()


def test_convrelu_fp32_is_relu_of_conv():
    conv = _conv()
    x = torch.randn(4, 3, 12, 12)
    with torch.inference_mode():
        assert torch.equal(ConvReLU(conv)(x), F.relu(conv(x)))


@needs_onednn
@pytest.mark.parametrize("cin,stride", [(3, 1), (16, 2)])
def test_convrelu_bf16_equals_autocast(cin, stride):
    conv = _conv(cin, 24, stride=stride).to(memory_format=torch.channels_last)
    fused = ConvReLU(conv)
    with torch.inference_mode():
        for batch in (5, 2, 5):  # a second shape packs weights again; the first is reused
            x = torch.randn(batch, cin, 15, 15).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref = F.relu(conv(x))
                out = fused(x)
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=1e-2)
    assert len(fused._packed) == 2


def test_convrelu_keeps_a_bounded_number_of_packed_weights():
    fused = ConvReLU(_conv())
    if not _onednn_pointwise_available():
        pytest.skip("no oneDNN pointwise convolution")
    with torch.inference_mode():
        for b in range(1, 12):
            fused(torch.randn(b, 3, 8, 8).to(torch.bfloat16))
    assert 1 <= len(fused._packed) <= ConvReLU._KEEP_SHAPES


def _smallcnn(size=32, ch=1):
    torch.manual_seed(0)
    net = EmbeddingNet(ModelConfig(input_size=size, in_channels=ch, embedding_dim=32, mean=(0.5,) * ch, std=(0.5,) * ch))
    for m in net.modules():  # non-trivial running statistics, so that folding has work to do
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_optimize_for_inference_keeps_the_fp32_function():
    plain = _smallcnn()
    fast = optimize_for_inference(copy.deepcopy(plain))
    kinds = [type(m) for m in fast.modules()]
    assert kinds.count(MaxPool2x2) == 4 and nn.MaxPool2d not in kinds and nn.BatchNorm2d not in kinds
    if _onednn_pointwise_available():
        assert kinds.count(ConvReLU) == 4
    x = torch.randn(6, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=1e-5)


@needs_onednn
def test_optimize_for_inference_bf16_matches_autocast_of_the_plain_network():
    plain = fold_batchnorm(_smallcnn(48, 3)).to(memory_format=torch.channels_last)
    fast = optimize_for_inference(copy.deepcopy(plain))
    x = torch.randn(16, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = plain(x).float(), fast(x).float()
    assert F.cosine_similarity(a, b).min().item() > 0.9999


def test_optimize_for_inference_leaves_other_pools_alone_and_refuses_training_mode():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2))
    optimize_for_inference(net.eval())
    assert [type(m) for m in net] == [nn.Conv2d, nn.Sigmoid, nn.MaxPool2d, MaxPool2x2]  # no ReLU: no fusion
    with pytest.raises(ValueError, match="eval-mode"):
        optimize_for_inference(_smallcnn().train())
