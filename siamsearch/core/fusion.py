"""Rewrites of a network for inference: the same function, fewer and cheaper operations.

:func:`optimize_for_inference` is applied to every loaded model (:class:`~siamsearch.core.embedder.Embedder`);
training never sees these modules. Each rewrite keeps the network's output:

* **BatchNorm folding** (:func:`fold_batchnorm`): an eval-mode ``BatchNorm2d`` after a ``Conv2d`` becomes
  part of the conv's weights and bias (outputs equal to ~1e-6).
* **2 x 2 max pooling** (:class:`MaxPool2x2`): ``MaxPool2d(2)`` as the maximum of four strided views, bit-equal
  to ``max_pool2d``. PyTorch's CPU kernel also computes the argmax indices and is slow on channels-last
  tensors: on this project's 2-core machine it took 46 % of smallcnn's bf16 forward pass at 64 px
  (19 ms of 41 ms per batch of 128 for the first stage alone; the four views take 3 ms).
* **Conv + ReLU in one oneDNN call** (:class:`ConvReLU`): on the CPU in bf16 (``--precision bf16``, or
  ``auto`` where the CPU has native bf16) a ``Conv2d`` followed by ``ReLU`` runs as one oneDNN convolution
  with the ReLU as a post-op, on bf16 weights reordered once into oneDNN's blocked layout (the
  same kernels ``torch.compile`` emits, without minutes of compilation). In fp32, fp16 or on CUDA it runs
  the plain ``relu(conv(x))``. Results equal bf16 autocast's exactly (same kernel, same rounding).

Together they take smallcnn at 64 px from 1.6-1.9x to ~2.6x fp32 eager on that machine
(``benchmarks/embed_speed.py``; docs/speed.md has the figures).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` in a ``Sequential`` into that conv
    (in place; the BatchNorm becomes ``Identity``). Returns ``net``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return net


class MaxPool2x2(nn.Module):
    """``MaxPool2d(kernel_size=2, stride=2)`` for inference: ``[B, C, H, W] -> [B, C, H // 2, W // 2]``,
    bit-equal to :func:`torch.nn.functional.max_pool2d` (odd H or W: that function is used)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            return F.max_pool2d(x, 2)
        top = torch.maximum(x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2])
        return torch.maximum(top, torch.maximum(x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]))


def _onednn_pointwise_available() -> bool:
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise") and hasattr(
        ops, "_reorder_convolution_weight")


class ConvReLU(nn.Module):
    """``relu(conv(x))``: one fused oneDNN bf16 call on the CPU in bf16, else the plain two operations.

    Args:
        conv: the ``Conv2d`` (BatchNorm already folded in); kept as a submodule for the plain path.

    Input ``[B, C_in, H, W]`` (fp32 or bf16, channels-last preferred) -> ``[B, C_out, H', W']``, bf16 on the
    fused path (as bf16 autocast would give), else the input's dtype.
    """

    _KEEP_SHAPES = 4  # packed weights are kept for this many input shapes (a ragged last batch adds one)

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self._args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self._packed: dict = {}
        self._bf16: tuple = ()

    def _use_fused(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or isinstance(self.conv.padding, str) or self.conv.padding_mode != "zeros":
            return False
        if x.dtype == torch.bfloat16:
            return True
        return (x.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def _weight_for(self, x: torch.Tensor) -> tuple:
        if not self._bf16:
            w = self.conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            b = None if self.conv.bias is None else self.conv.bias.detach().to(torch.bfloat16)
            self._bf16 = (w, b)
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= self._KEEP_SHAPES:
                self._packed.clear()
            packed = self._packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                self._bf16[0], *self._args[:3], self._args[3], list(key))
        return packed, self._bf16[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_fused(x):
            return F.relu(self.conv(x), inplace=True)
        x = x.to(torch.bfloat16)
        w, b = self._weight_for(x)
        return torch.ops.mkldnn._convolution_pointwise(x, w, b, *self._args[:3], self._args[3], "relu", [None], "")


def _rewrite(module: nn.Module, fuse: bool) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MaxPool2d) and _is_plain_2x2(child):
            setattr(module, name, MaxPool2x2())
        elif isinstance(child, nn.Sequential) and fuse:
            _fuse_sequential(child)
            _rewrite(child, fuse)
        else:
            _rewrite(child, fuse)


def _is_plain_2x2(pool: nn.MaxPool2d) -> bool:
    def pair(v) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (pair(pool.kernel_size) == (2, 2) and pair(pool.stride) == (2, 2) and pair(pool.padding) == (0, 0)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)


def _fuse_sequential(seq: nn.Sequential) -> None:
    """``Conv2d, Identity*, ReLU`` inside ``seq`` -> ``ConvReLU, Identity*, Identity`` (in place)."""
    for i, m in enumerate(seq):
        if not isinstance(m, nn.Conv2d):
            continue
        j = i + 1
        while j < len(seq) and isinstance(seq[j], nn.Identity):
            j += 1
        if j < len(seq) and isinstance(seq[j], nn.ReLU):
            seq[i], seq[j] = ConvReLU(m), nn.Identity()


def optimize_for_inference(net: nn.Module) -> nn.Module:
    """Apply the rewrites of this module to an eval-mode network, in place; returns ``net``.

    The result computes the same function (see the module docstring for each rewrite's exactness) and is
    for inference only: never train it. Works on any network; patterns it does not know are left alone.
    """
    if net.training:
        raise ValueError("optimize_for_inference needs an eval-mode network (call net.eval() first)")
    fold_batchnorm(net)
    _rewrite(net, fuse=_onednn_pointwise_available())
    return net
