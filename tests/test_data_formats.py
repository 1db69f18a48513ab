"""Loaders and format detection on tiny generated datasets."""
from __future__ import annotations

import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datagen import make_celeba, make_folders, make_idx, make_zip, omniglot_members, write_idx
from siamsearch.data import FASHION_MNIST_CLASSES, ImageDataset, UnreadableImageWarning, collate_skip_none, detect_format, open_dataset
from siamsearch.core.errors import SiamsearchError, UnreadableImage


# ----------------------------------------------------------------- identity folders
def test_folders_identities_names_and_case_insensitive_extensions(tmp_path):
    root = make_folders(tmp_path / "ds", {"bob": 2, "alice": 3})
    make_folders(tmp_path / "ds", {"carol": 2}, ext=".JPG", seed=100)
    (tmp_path / "ds" / "alice" / "notes.txt").write_text("not an image")
    (tmp_path / "ds" / ".hidden").mkdir()
    ds = open_dataset(root)
    assert detect_format(root) == "folders"
    assert ds.format == "folders"
    assert ds.identity_names == ["alice", "bob", "carol"]
    assert ds.identities.dtype == np.int64
    assert list(np.bincount(ds.identities)) == [3, 2, 2]
    assert len(ds) == 7
    for i in range(len(ds)):
        name = ds.identity_names[ds.identities[i]]
        assert f"/{name}/" in ds.source(i)
        img, ident = ds[i]
        assert isinstance(img, Image.Image) and ident == ds.identities[i]
    assert any(ds.source(i).endswith(".JPG") for i in range(len(ds)))


def test_folders_nested_images_belong_to_top_folder_and_loose_files_ignored(tmp_path):
    root = make_folders(tmp_path / "ds", {"a": 2, "b": 2})
    make_folders(tmp_path / "ds" / "a", {"sub": 2}, seed=50)
    make_folders(tmp_path / "loose", {"x": 1}, seed=90)
    (tmp_path / "loose" / "x" / "img_0.png").rename(root / "loose.png")
    with pytest.warns(UserWarning, match="belong to no identity"):
        ds = open_dataset(root)
    assert ds.identity_names == ["a", "b"]
    assert list(np.bincount(ds.identities)) == [4, 2]
    assert ds.notes


def test_symlinked_identity_folders_are_read(tmp_path):
    """A training set assembled from symbolic links to identity folders (a common way to build one)."""
    store = make_folders(tmp_path / "store", {"ann": 3, "bob": 2})
    root = tmp_path / "ds"
    root.mkdir()
    (root / "ann").symlink_to(store / "ann", target_is_directory=True)
    (root / "bob").symlink_to(store / "bob", target_is_directory=True)
    make_folders(root, {"cat": 2}, seed=7)  # a real folder beside the links
    ds = open_dataset(root)
    assert ds.identity_names == ["ann", "bob", "cat"]
    assert list(np.bincount(ds.identities)) == [3, 2, 2]
    assert all(ds.load(i) is not None for i in range(len(ds)))


def test_symlink_loop_is_not_followed_forever(tmp_path):
    root = make_folders(tmp_path / "ds", {"ann": 2, "bob": 2})
    (root / "ann" / "again").symlink_to(root, target_is_directory=True)   # ds/ann/again -> ds
    (root / "bob" / "self").symlink_to(root / "bob", target_is_directory=True)
    with pytest.warns(UserWarning, match="symbolic link loop"):
        ds = open_dataset(root)
    assert ds.identity_names == ["ann", "bob"]
    assert list(np.bincount(ds.identities)) == [2, 2]


def test_with_transform_and_getitem(tmp_path):
    ds = open_dataset(make_folders(tmp_path / "ds", {"a": 2, "b": 2}, size=9))
    t = ds.with_transform(lambda im: torch.zeros(1, im.size[1], im.size[0]))
    assert ds.transform is None and t is not ds
    x, y = t[3]
    assert x.shape == (1, 9, 9) and y == ds.identities[3]
    assert isinstance(ds[3][0], Image.Image)


def test_corrupt_file_is_skipped_with_one_warning_and_collate_drops_it(tmp_path):
    root = make_folders(tmp_path / "ds", {"a": 3, "b": 3})
    bad = root / "a" / "img_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = open_dataset(root).with_transform(lambda im: torch.tensor(np.asarray(im.convert("L")), dtype=torch.float32))
    i_bad = next(i for i in range(len(ds)) if ds.source(i) == str(bad))
    with pytest.raises(UnreadableImage):
        ds.load(i_bad)
    with pytest.warns(UnreadableImageWarning, match="img_1.png"):
        assert ds[i_bad] is None
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert ds[i_bad] is None  # once per file
    assert not [w for w in rec if issubclass(w.category, UnreadableImageWarning)]
    batches = list(DataLoader(ds, batch_size=6, collate_fn=collate_skip_none))
    assert len(batches) == 1
    x, y = batches[0]
    assert x.shape[0] == 5 and y.shape == (5,)
    assert collate_skip_none([None, None]) is None


def test_subset_reindex_and_keep(tmp_path):
    ds = open_dataset(make_folders(tmp_path / "ds", {"a": 2, "b": 2, "c": 2, "d": 2}))
    idx = np.flatnonzero(np.isin(ds.identities, [1, 3]))
    sub = ds.subset(idx)
    assert sub.identity_names == ["b", "d"]
    assert sorted(set(sub.identities.tolist())) == [0, 1]
    assert [sub.source(i) for i in range(len(sub))] == [ds.source(i) for i in idx]
    kept = ds.subset(idx, reindex=False)
    assert kept.identity_names == ds.identity_names
    assert kept.identities.tolist() == ds.identities[idx].tolist()
    mask = ds.identities == 2
    assert ds.subset(mask).identity_names == ["c"]
    with pytest.raises(SiamsearchError):
        ds.subset([100])


def test_digest_stable_and_sensitive(tmp_path):
    a = make_folders(tmp_path / "one", {"a": 2, "b": 2})
    b = make_folders(tmp_path / "two", {"a": 2, "b": 2})
    da, db = open_dataset(a), open_dataset(b)
    assert da.digest() == open_dataset(a).digest()
    assert da.digest() == db.digest()  # independent of where the data lies
    assert da.subset([0, 1, 2]).digest() != da.digest()
    assert da.subset([1, 0, 2, 3]).digest() != da.digest()
    (a / "b" / "img_0.png").rename(a / "a" / "img_9.png")
    assert open_dataset(a).digest() != db.digest()


def test_from_arrays(tmp_path):
    x = np.zeros((5, 8, 8), np.uint8)
    ds = ImageDataset.from_arrays(x, [7, 3, 7, 3, 9])
    assert ds.identity_names == ["3", "7", "9"]
    assert ds.identities.tolist() == [1, 0, 1, 0, 2]
    assert ds.load(0).mode == "L" and ds.source(2) == "arrays#2"


# ----------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_splits_and_names(tmp_path, gz):
    x_tr, y_tr, x_te, y_te = make_idx(tmp_path / "mnist", gz=gz)
    assert detect_format(tmp_path / "mnist") == "idx"
    ds = open_dataset(tmp_path / "mnist")
    assert ds.format == "idx" and len(ds) == len(x_tr)
    assert ds.identity_names == [str(d) for d in range(10)]
    assert ds.identities.tolist() == y_tr.tolist()
    img = ds.load(3)
    assert img.mode == "L" and np.array_equal(np.asarray(img), x_tr[3])
    assert ds.source(3).endswith(f"train-images-idx3-ubyte{'.gz' if gz else ''}#3")
    te = open_dataset(tmp_path / "mnist", split="test")
    assert len(te) == len(x_te) and np.array_equal(np.asarray(te.load(1)), x_te[1])
    both = open_dataset(tmp_path / "mnist", split="all")
    assert len(both) == len(x_tr) + len(x_te)
    assert np.array_equal(np.asarray(both.load(len(x_tr))), x_te[0])
    assert "t10k" in both.source(len(x_tr))
    with pytest.raises(SiamsearchError, match="split"):
        open_dataset(tmp_path / "mnist", split="bogus")


def test_idx_fashion_names(tmp_path):
    make_idx(tmp_path / "fashion-mnist")
    assert open_dataset(tmp_path / "fashion-mnist").identity_names == list(FASHION_MNIST_CLASSES)
    make_idx(tmp_path / "plain")
    assert open_dataset(tmp_path / "plain", format="fashion-mnist").identity_names[0] == "T-shirt/top"
    assert open_dataset(tmp_path / "fashion-mnist", format="mnist").identity_names[0] == "0"


def test_idx_missing_split_and_truncated(tmp_path):
    d = tmp_path / "only_test"
    d.mkdir()
    rng = np.random.default_rng(0)
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (4, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(4))
    with pytest.raises(SiamsearchError, match="train.*missing.*test"):
        open_dataset(d)
    assert len(open_dataset(d, split="test")) == 4
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (4).to_bytes(4, "big") * 1
                                               + (28).to_bytes(4, "big") * 2 + b"\x00" * 10)
    with pytest.raises(SiamsearchError, match="truncated"):
        open_dataset(d, split="test")


# ----------------------------------------------------------------- Omniglot
def test_omniglot_two_overlapping_zips_merge_and_dedup(tmp_path):
    # small1: Alpha, Greek, Latin; small2: Greek, Latin (byte-identical), Zeta
    m1 = omniglot_members({"Alpha": 2, "Greek": 2, "Latin": 1}, "images_background_small1/", seed=0)
    m2 = omniglot_members({"Greek": 2, "Latin": 1, "Zeta": 2}, "images_background_small2/", seed=0)
    # one extra Greek drawing only in small2 (different bytes): must be kept
    m2["images_background_small2/Greek/character01/9999_09.png"] = omniglot_members(
        {"X": 1}, "", seed=5, drawings=1)["X/character01/0001_01.png"]
    z1 = make_zip(tmp_path / "images_background_small1.zip", m1)
    z2 = make_zip(tmp_path / "images_background_small2.zip", m2, with_dirs=False)
    assert detect_format(z1) == "omniglot"
    assert detect_format([z1, z2]) == "omniglot"
    ds = open_dataset([z1, z2])
    assert ds.format == "omniglot"
    assert ds.identity_names == ["Alpha/character01", "Alpha/character02", "Greek/character01",
                                 "Greek/character02", "Latin/character01", "Zeta/character01",
                                 "Zeta/character02"]
    counts = np.bincount(ds.identities).tolist()
    assert counts == [3, 3, 4, 3, 3, 3, 3]
    assert any("byte-identical" in n for n in ds.notes)
    # no two samples of the dataset have the same bytes
    hashes = [ds.content_hash(i) for i in range(len(ds))]
    assert len(set(hashes)) == len(ds)
    assert "::" in ds.source(0) and ds.load(0).size == (10, 10)
    # the folder holding both zips reads both
    assert open_dataset(tmp_path).digest() == ds.digest()


def test_omniglot_unpacked_folder_and_zip_mixed(tmp_path):
    members = omniglot_members({"Alpha": 2, "Beta": 1}, "", seed=1)
    root = tmp_path / "images_background"
    for name, data in members.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    assert detect_format(root) == "omniglot"  # not mistaken for identity folders
    ds = open_dataset(root)
    assert ds.identity_names == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    z = make_zip(tmp_path / "more.zip", omniglot_members({"Beta": 1, "Gamma": 1}, "x/", seed=1))
    mixed = open_dataset([root, z])
    assert mixed.identity_names[-1] == "Gamma/character01"
    assert np.bincount(mixed.identities).tolist() == [3, 3, 3, 3]  # Beta deduplicated


def test_zip_dataset_works_with_worker_processes(tmp_path):
    z = make_zip(tmp_path / "o.zip", omniglot_members({"Alpha": 2}, "r/", seed=2))
    ds = open_dataset(z)
    ds.load(0)  # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(np.asarray(clone.load(1)), np.asarray(ds.load(1)))
    t = ds.with_transform(lambda im: torch.tensor(np.asarray(im, dtype=np.float32)))
    loader = DataLoader(t, batch_size=3, num_workers=2, collate_fn=collate_skip_none)
    xs = torch.cat([x for x, _ in loader])
    assert xs.shape == (6, 10, 10)


def test_non_omniglot_zip_is_refused(tmp_path):
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a/b.png", b"x")
    with pytest.raises(SiamsearchError, match="Omniglot"):
        detect_format(z)


# ----------------------------------------------------------------- CelebA
def test_celeba_identities_and_splits(tmp_path):
    labels = [5, 5, 9, 9, 9, 2, 2, 7]
    part = [0, 0, 0, 0, 0, 1, 1, 2]
    root = make_celeba(tmp_path / "celeba", labels, part)
    assert detect_format(root) == "celeba"
    ds = open_dataset(root)  # default split: train
    assert ds.format == "celeba" and len(ds) == 5
    assert ds.identity_names == ["5", "9"]
    assert ds.identities.tolist() == [0, 0, 1, 1, 1]
    assert ds.source(0).endswith("img_align_celeba/000001.jpg")
    assert ds.load(0).mode == "RGB"
    assert len(open_dataset(root, split="valid")) == 2
    assert open_dataset(root, split="test").identity_names == ["7"]
    alld = open_dataset(root, split="all")
    assert alld.identity_names == ["2", "5", "7", "9"] and len(alld) == 8
    # positives come from the identity file
    names = [alld.identity_names[i] for i in alld.identities]
    assert names == [str(x) for x in labels]


def test_celeba_nested_layout_missing_files_no_partition(tmp_path):
    root = make_celeba(tmp_path / "CelebA", [1, 1, 2, 2], missing=[3], nested=True)
    with pytest.warns(UserWarning, match="1 image"):
        ds = open_dataset(root)
    assert len(ds) == 3  # no partition file: all images
    with pytest.raises(SiamsearchError, match="list_eval_partition"):
        open_dataset(root, split="train")


# ----------------------------------------------------------------- detection errors
def test_detect_nothing_lists_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiamsearchError, match="identity_CelebA.txt") as e:
        detect_format(tmp_path / "empty")
    assert "folders" in str(e.value) and "idx" in str(e.value)
    with pytest.raises(SiamsearchError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(SiamsearchError, match="unknown dataset format"):
        open_dataset(tmp_path / "empty", format="pascal")
    root = make_folders(tmp_path / "f", {"a": 2})
    with pytest.raises(SiamsearchError, match="no predefined split"):
        open_dataset(root, split="train")
    with pytest.raises(SiamsearchError, match="only supported for Omniglot"):
        open_dataset([root, root])
