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


def _stripes(width: int = 40, height: int = 20) -> Image.Image:
    """Black ends (6 px each side) around a white middle: shows what a resize keeps."""
    arr = np.zeros((height, width), np.uint8)
    arr[:, 6:width - 6] = 255
    return Image.fromarray(arr, "L")


def test_short_side_keeps_aspect_squash_does_not():
    img = _stripes()
    keep = build_transform(ModelConfig(input_size=16, resize="short_side", mean=(0.0,), std=(1.0,)))(img)
    squash = build_transform(ModelConfig(input_size=16, resize="squash", mean=(0.0,), std=(1.0,)))(img)
    assert keep.shape == squash.shape == (1, 16, 16)
    # short side 20 -> 16, long side 40 -> 32, centre 16 columns = original columns 10..30: all white
    assert keep.min() > 0.95
    # squashed: the black ends stay in, at a quarter of the width each
    assert squash[0, :, 0].max() < 0.05 and squash[0, :, -1].max() < 0.05 and squash[0, :, 8].min() > 0.95


def test_crop_before_resize_centre_fraction_and_box():
    arr = np.zeros((100, 200), np.uint8)
    arr[25:75, 50:150] = 255  # the centre half of each side is white
    img = Image.fromarray(arr, "L")
    plain = dict(input_size=16, mean=(0.0,), std=(1.0,))
    assert build_transform(ModelConfig(crop=0.5, **plain))(img).min() > 0.95
    assert build_transform(ModelConfig(crop=(0.25, 0.25, 0.75, 0.75), **plain))(img).min() > 0.95
    # a box on the black top-left corner
    assert build_transform(ModelConfig(crop=(0.0, 0.0, 0.2, 0.2), **plain))(img).max() < 0.05
    from siamsearch.core.preprocess import crop_box

    assert crop_box(200, 100, (0.5,)) == (50, 25, 150, 75)
    assert crop_box(250, 250, (0.1, 0.2, 0.9, 1.0)) == (25, 50, 225, 250)


def test_bad_crop_and_resize_are_user_errors():
    from siamsearch.core.errors import SiamsearchError

    for bad in (0.0, 1.5, (0.1, 0.2), (0.5, 0.5, 0.4, 0.9), "x"):
        with pytest.raises(SiamsearchError, match="crop"):
            ModelConfig(crop=bad)
    with pytest.raises(SiamsearchError, match="resize"):
        ModelConfig(resize="stretch")
    with pytest.raises(SiamsearchError, match="augmentation"):
        ModelConfig(augmentation="mixup")


def test_old_configs_keep_their_meaning_and_fingerprint():
    """A config dict written before crop/resize/augmentation existed: squash, no crop, affine; to_dict unchanged."""
    old = {"backbone": "smallcnn", "embedding_dim": 128, "hflip": False, "in_channels": 1, "input_size": 64,
           "mean": [0.5], "std": [0.5]}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.crop, cfg.resize, cfg.augmentation) == (None, "squash", "affine")
    assert cfg.to_dict() == old
    new = ModelConfig(crop=0.5, resize="short_side", augmentation="photo")
    assert ModelConfig.from_json(new.to_json()) == new and new.to_dict()["crop"] == [0.5]


def _photo_config(**kw):
    return ModelConfig(input_size=16, in_channels=3, mean=(0.0,) * 3, std=(1.0,) * 3, **kw)


def test_photo_augmentation_changes_pixels_affine_keeps_a_flat_image():
    flat = Image.new("RGB", (24, 24), (120, 90, 60))
    torch.manual_seed(0)
    eval_x = build_transform(_photo_config(augmentation="photo"))(flat)
    photo = [build_transform(_photo_config(augmentation="photo"), train=True)(flat) for _ in range(8)]
    # brightness / contrast / colour jitter and random grey move a flat image's values
    assert max(float((x - eval_x).abs().max()) for x in photo) > 0.05
    # the characters' affine (filled with the border colour) leaves a flat image as it is
    affine = build_transform(_photo_config(augmentation="affine"), train=True)(flat)
    assert torch.allclose(affine, build_transform(_photo_config(augmentation="affine"))(flat), atol=1e-6)
    assert all(x.shape == (3, 16, 16) for x in photo)


def test_characters_preset_has_no_photo_augmentation_or_flips():
    from siamsearch.core.presets import PRESETS, preset_config_fields, preset_values

    values = preset_values("characters", 1, 32)
    cfg = ModelConfig.for_channels(values["in_channels"], **preset_config_fields(values))
    assert (cfg.augmentation, cfg.hflip, cfg.crop, cfg.input_size) == ("affine", False, None, 32)
    assert PRESETS["faces"]["augmentation"] == "photo" and PRESETS["faces"]["hflip"] and PRESETS["faces"]["crop"] == (0.5,)
    # an asymmetric character is never mirrored by the characters' training pipeline
    arr = np.zeros((16, 16), np.uint8)
    arr[:, :4] = 255
    img = Image.fromarray(arr, "L")
    tf = build_transform(ModelConfig(input_size=16, mean=(0.0,), std=(1.0,), augmentation=cfg.augmentation,
                                     hflip=cfg.hflip), train=True)
    torch.manual_seed(0)
    for _ in range(20):
        x = tf(img)
        assert x[0, :, :6].mean() > x[0, :, -6:].mean()


def _photo(tmp_path, w=400, h=300, name="photo.jpg", **save):
    yy, xx = np.mgrid[:h, :w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / name
    Image.fromarray(rgb).save(path, quality=95, **save)
    return path


def test_decode_size_accounts_for_the_crop():
    from siamsearch.core.preprocess import decode_size

    assert decode_size(ModelConfig(input_size=64)) == 64
    assert decode_size(ModelConfig(input_size=64, crop=(0.5,))) == 128
    assert decode_size(ModelConfig(input_size=60, crop=(0.1, 0.2, 0.5, 0.9))) == 150  # 0.4 of the width


def test_large_jpeg_decodes_at_reduced_scale_other_files_in_full(tmp_path):
    jpg = _photo(tmp_path)
    small = read_image(jpg, min_size=64, mode="L")
    assert small.mode == "L" and min(small.size) >= 64 and small.size[0] < 400  # 1/4 scale: 100 x 75
    assert read_image(jpg).size == (400, 300) and read_image(jpg, min_size=200).size == (400, 300)
    png = tmp_path / "p.png"
    Image.open(jpg).save(png)
    assert read_image(png, min_size=64, mode="L").size == (400, 300)


@pytest.mark.parametrize("channels", [1, 3])
def test_reduced_scale_decoding_changes_the_input_by_resampling_only(tmp_path, channels):
    cfg = ModelConfig(input_size=48, in_channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    tf = build_transform(cfg)
    jpg = _photo(tmp_path)
    by_path, in_full = tf(str(jpg)), tf(read_image(jpg))
    assert by_path.shape == in_full.shape == (channels, 48, 48)
    assert (by_path - in_full).abs().mean() < 0.03  # in normalised units of [-1, 1]


def test_exif_orientation_is_applied_to_reduced_scale_decoding(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    jpg = _photo(tmp_path, exif=exif.tobytes())
    assert read_image(jpg).size == (300, 400)
    w, h = read_image(jpg, min_size=64).size
    assert h > w >= 64


@pytest.mark.parametrize("channels", [1, 3])
def test_tensor_step_equals_torchvision_to_tensor_then_normalize(channels):
    from torchvision import transforms as T

    from siamsearch.core.preprocess import _ToNormalizedTensor

    mean, std = (0.2, 0.5, 0.7)[:channels], (0.3, 0.25, 0.5)[:channels]
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (9, 7, 3) if channels == 3 else (9, 7), dtype=np.uint8))
    ref = T.Normalize(mean, std)(T.ToTensor()(img))
    out = _ToNormalizedTensor(mean, std)(img)
    assert out.shape == ref.shape == (channels, 9, 7) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("short_side", [False, True])
@pytest.mark.parametrize("wh", [(28, 28), (100, 37), (37, 100), (64, 64), (13, 200), (640, 480)])
def test_resize_gives_torchvision_pixels(short_side, wh):
    from torchvision import transforms as T

    from siamsearch.core.preprocess import _Resize

    rng = np.random.default_rng(sum(wh))
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    bilinear = T.InterpolationMode.BILINEAR
    ref = (T.Compose([T.Resize(32, interpolation=bilinear, antialias=True), T.CenterCrop(32)]) if short_side
           else T.Resize((32, 32), interpolation=bilinear, antialias=True))(img)
    out = _Resize(32, short_side)(img)
    assert out.size == ref.size == (32, 32)
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_loading_a_model_does_not_import_torchvision():
    import subprocess
    import sys

    code = ("import sys; from siamsearch.core.embedder import load_model; "
            "from siamsearch.core.preprocess import build_transform; "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
