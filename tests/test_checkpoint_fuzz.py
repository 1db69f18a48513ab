"""Any file that is not a siamsearch checkpoint gives the one clean CheckpointError (issue 16, item 1)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import CheckpointError, SiamsearchError
from siamsearch.query.record import load_record

MESSAGE = "not a siamsearch checkpoint"


def _refused(path) -> None:
    """Loading ``path`` raises CheckpointError (never another type) from the loader and the model."""
    for load in (load_checkpoint, load_model):
        try:
            load(path)
        except CheckpointError:
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{load.__name__} raised {type(e).__name__}: {e} on {path.name}")
        pytest.fail(f"{load.__name__} accepted {path.name}")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for i, n in enumerate([1, 2, 7, 64, 512, 4096, 65536]):
        p = tmp_path / f"rand{i}.pt"
        p.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        _refused(p)


def test_every_prefix_of_a_real_checkpoint(tiny_model, tmp_path):
    data = tiny_model.read_bytes()
    # every prefix near the start and the end (headers, zip directory), a sample in between
    cuts = sorted(set(range(0, 600)) | set(range(len(data) - 600, len(data)))
                  | set(np.random.default_rng(1).integers(0, len(data), 300).tolist()))
    p = tmp_path / "prefix.pt"
    for n in cuts:
        p.write_bytes(data[:n])
        try:
            load_checkpoint(p)
        except CheckpointError:
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"prefix of {n} of {len(data)} bytes raised {type(e).__name__}: {e}")
        pytest.fail(f"prefix of {n} of {len(data)} bytes loaded")


def test_flipped_bytes_never_raise_anything_else(tiny_model, tmp_path):
    data = bytearray(tiny_model.read_bytes())
    rng = np.random.default_rng(2)
    p = tmp_path / "flip.pt"
    for _ in range(150):
        d = bytearray(data)
        for pos in rng.integers(0, len(d), 3):
            d[pos] ^= 0xFF
        p.write_bytes(bytes(d))
        try:
            load_checkpoint(p)
        except CheckpointError:
            pass
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"flipped bytes raised {type(e).__name__}: {e}")


@pytest.mark.parametrize("text", ["a,b,is_same\nx.png,y.png,1\n", "", "\n", "{}", '{"kind": "x"}', "hello\x00"])
def test_text_files(tmp_path, text):
    p = tmp_path / "pairs.csv"
    p.write_text(text)
    _refused(p)


def test_zip_files(tmp_path):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    _refused(p)
    p2 = tmp_path / "fake.pt"  # a zip laid out like a torch file but with a bogus pickle
    with zipfile.ZipFile(p2, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.garbage")
        z.writestr("archive/version", "3\n")
    _refused(p2)


@pytest.mark.parametrize("obj", [
    {"w": torch.zeros(3)}, [1, 2, 3], torch.zeros(2), 42, "text",
    {"format": "siamsearch.checkpoint"},
    {"format": "siamsearch.checkpoint", "format_version": 1, "config": 5, "state_dict": {}, "card": "{}",
     "fingerprint": "x"},
    {"format": "siamsearch.checkpoint", "format_version": "1"},
    {"format": "siamsearch.checkpoint", "format_version": 1, "config": "{not json", "state_dict": {},
     "card": "{}", "fingerprint": "0"},
    {"format": "siamsearch.checkpoint", "format_version": 1, "config": '{"input_size": "big"}',
     "state_dict": {}, "card": "[]", "fingerprint": "0"},
])
def test_other_torch_files(tmp_path, obj):
    p = tmp_path / "other.pt"
    torch.save(obj, p)
    _refused(p)


def test_model_whose_weights_do_not_fit_its_config(tiny_model, tmp_path):
    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig

    p = tmp_path / "misfit.pt"
    save_checkpoint(p, ModelConfig(input_size=16, embedding_dim=8), {"nonsense": torch.zeros(2)}, {})
    with pytest.raises(CheckpointError):
        load_model(p)


def test_records_refuse_foreign_files(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("a,b,is_same\nx.png,y.png,1\n")
    with pytest.raises(SiamsearchError, match=MESSAGE):
        load_record(p)


def _commands(model: str, other: str, ids: str, out: str, a: str, b: str) -> list[list[str]]:
    return [
        ["verify", "--pairs", model, "--model", other],  # arguments swapped: the CSV given as the model
        ["verify", a, b, "--model", other],
        ["verify", a, b, "--model", model, "--calibration", other],
        ["query", ids, "--index", ids, "--model", other],
        ["index", "build", ids, "--model", other, "--out", out],
        ["calibrate", "--model", other, "--data", ids],
        ["evaluate", "--model", other, "--data", ids],
    ]


def test_every_command_gives_the_clean_message(tiny_model, tmp_path, identity_folders):
    from siamsearch.cli import main

    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,is_same\nx.png,y.png,1\n")
    a, b = sorted(identity_folders.glob("*/*.png"))[:2]
    runner = CliRunner()
    for args in _commands(str(tiny_model), str(csv), str(identity_folders), str(tmp_path / "idx"), str(a), str(b)):
        r = runner.invoke(main, args)
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert MESSAGE in r.output and "Traceback" not in r.output, (args, r.output)
