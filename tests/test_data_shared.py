"""The loaders on the real datasets in ../shared/data (skipped when absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from siamsearch.data import FASHION_MNIST_CLASSES, detect_format, open_dataset, sample_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OMNIGLOT = SHARED / "omniglot"
FASHION = SHARED / "fashion-mnist"

pytestmark = pytest.mark.shared


@pytest.mark.skipif(not (OMNIGLOT / "images_background_small1.zip").exists(), reason="no ../shared/data/omniglot")
def test_omniglot_minimal_splits_merge_to_242_characters():
    zips = [OMNIGLOT / "images_background_small1.zip", OMNIGLOT / "images_background_small2.zip"]
    assert detect_format(zips) == "omniglot"
    ds = open_dataset(zips)
    assert len(ds) == 4840
    assert len(ds.identity_names) == 242
    assert len({n.split("/")[0] for n in ds.identity_names}) == 8
    assert (np.bincount(ds.identities) == 20).all()
    img = ds.load(0)
    assert img.size == (105, 105)
    # the folder holding the zips gives the same samples (all_runs.zip is not Omniglot layout)
    assert open_dataset(OMNIGLOT).digest() == ds.digest()


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(), reason="no ../shared/data/fashion-mnist")
def test_fashion_mnist_idx():
    assert detect_format(FASHION) == "idx"
    train = open_dataset(FASHION)
    assert len(train) == 60000 and train.identity_names == list(FASHION_MNIST_CLASSES)
    assert (np.bincount(train.identities) == 6000).all()
    test = open_dataset(FASHION, split="test")
    assert len(test) == 10000
    assert test.load(0).size == (28, 28) and test.load(0).mode == "L"
    a, b, same = sample_pairs(test.identities, 20000, seed=0)
    assert same.sum() == 10000 and not np.any(a == b)
