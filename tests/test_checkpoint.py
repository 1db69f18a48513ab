
import numpy as np
import pytest
import torch

from siamsearch.core.checkpoint import load_checkpoint, write_calibration
from siamsearch.core.config import ModelConfig
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import CheckpointError, FingerprintMismatch, SiamsearchError
from siamsearch.core.model import EmbeddingNet


def test_round_trip_identical_embeddings(tiny_model):
    m1, m2 = load_model(tiny_model), load_model(tiny_model)
    x = np.random.default_rng(0).random((3, 20, 20))
    assert m1.fingerprint == m2.fingerprint
    assert np.array_equal(m1.embed(x), m2.embed(x))
    e = m1.embed(x)
    assert e.shape == (3, 8) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "siamsearch.checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled Python code"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a siamsearch checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tiny_model, tmp_path):
    data = tiny_model.read_bytes()
    path = tmp_path / "trunc.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(EmbeddingNet(ModelConfig(input_size=16)).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a siamsearch checkpoint"):
        load_checkpoint(path)


def test_tampered_weights_fail_fingerprint(tiny_model):
    obj = torch.load(tiny_model, weights_only=True)
    key = next(iter(obj["state_dict"]))
    obj["state_dict"][key] = obj["state_dict"][key] + 1
    torch.save(obj, tiny_model)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(tiny_model)


def test_missing_file_says_how_to_train(tmp_path):
    with pytest.raises(SiamsearchError, match="siamsearch train"):
        load_checkpoint(tmp_path / "nope.pt")


def test_calibration_record_round_trip_and_mismatch(tiny_model):
    fp = load_checkpoint(tiny_model).fingerprint
    write_calibration(tiny_model, {"threshold": 0.7, "model_fingerprint": fp})
    assert load_checkpoint(tiny_model).calibration["threshold"] == 0.7
    assert load_checkpoint(tiny_model).fingerprint == fp
    with pytest.raises(FingerprintMismatch):
        write_calibration(tiny_model, {"threshold": 0.7, "model_fingerprint": "0" * 16})
