import numpy as np
import pytest
import torch
from PIL import Image

from siamsearch.core.config import ModelConfig
from siamsearch.core.images import UnreadableImage, read_image
from siamsearch.core.preprocess import build_transform, to_mode


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "LA"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_becomes_the_configured_tensor(mode, channels):
    cfg = ModelConfig.for_channels(channels, input_size=20)
    for train in (False, True):
        x = build_transform(cfg, train=train)(Image.new(mode, (31, 17)))
        assert x.shape == (channels, 20, 20) and x.dtype == torch.float32


def test_normalisation_uses_config_mean_std():
    cfg = ModelConfig(input_size=8, mean=(0.25,), std=(0.5,))
    x = build_transform(cfg)(Image.new("L", (8, 8), color=255))
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.25) / 0.5))


def test_sixteen_bit_is_rescaled_not_clipped():
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    assert 120 <= np.asarray(to_mode(im, 1)).mean() <= 135


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_mode(im, 3)).min() == 255


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)  # 20 wide, 10 tall
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert read_image(path).size == (10, 20)


def test_eval_pipeline_is_deterministic():
    cfg = ModelConfig(input_size=16)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30), dtype=np.uint8))
    t = build_transform(cfg)
    assert torch.equal(t(im), t(im))


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"), (b"hello, not an image", "not an image"),
])
def test_unreadable_reasons(tmp_path, content, reason):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        read_image(path)


def test_truncated_png(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="truncated|corrupt"):
        read_image(path)
