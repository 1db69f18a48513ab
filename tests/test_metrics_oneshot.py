"""One-shot loader and accuracy on tiny generated run folders and zips."""
import zipfile

import numpy as np
import pytest
from PIL import Image

from siamsearch.core.errors import SiamsearchError
from siamsearch.metrics import oneshot

WAYS = 3


def make_oneshot_runs(root, n_runs=2, wrong_label_in=None):
    """runNN/training/classKK.png (grey level 40*K), runNN/test/itemKK.png, class_labels.txt."""
    rng = np.random.default_rng(0)
    for r in range(1, n_runs + 1):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        perm = rng.permutation(WAYS) + 1
        lines = []
        for c in range(1, WAYS + 1):
            Image.fromarray(np.full((8, 8), 40 * c, np.uint8)).save(run / "training" / f"class{c:02d}.png")
        for i, c in enumerate(perm, 1):
            Image.fromarray(np.full((8, 8), 40 * c + 3, np.uint8)).save(run / "test" / f"item{i:02d}.png")
            label = c if not (wrong_label_in == r and i == 1) else (c % WAYS) + 1
            lines.append(f"run{r:02d}/test/item{i:02d}.png run{r:02d}/training/class{label:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def _mean_embed(images):
    return np.array([[np.asarray(im, np.float32).mean() / 255.0, 0.0] for im in images], np.float32)


def _zip(folder, path, prefix=""):
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, prefix + f.relative_to(folder).as_posix())
    return path


def test_folder_runs_perfect(tmp_path):
    runs = oneshot.load_oneshot_runs(make_oneshot_runs(tmp_path / "all_runs"))
    assert [r.name for r in runs] == ["run01", "run02"]
    r = runs[0]
    assert r.ways == WAYS and len(r.queries) == WAYS
    assert r.reference_names[0] == "training/class01.png"
    assert oneshot.oneshot_accuracy(runs, _mean_embed) == 1.0
    np.testing.assert_array_equal(oneshot.oneshot_per_run(runs, _mean_embed), [1.0, 1.0])


def test_wrong_label_counts_as_mistake(tmp_path):
    runs = oneshot.load_oneshot_runs(make_oneshot_runs(tmp_path / "all_runs", wrong_label_in=2))
    assert oneshot.oneshot_accuracy(runs, _mean_embed) == pytest.approx(5 / 6)
    np.testing.assert_allclose(oneshot.oneshot_per_run(runs, _mean_embed), [1.0, 2 / 3])
    m = oneshot.oneshot_metrics(runs, _mean_embed)
    assert m["n_queries"] == 6 and len(m["mistakes"]) == 1 and m["mistakes"][0]["run"] == "run02"
    assert m["mistakes"][0]["query"] == "test/item01.png"


@pytest.mark.parametrize("prefix", ["", "all_runs/"])
def test_zip_same_as_folder(tmp_path, prefix):
    folder = make_oneshot_runs(tmp_path / "all_runs", wrong_label_in=1)
    z = _zip(folder, tmp_path / "all_runs.zip", prefix)
    a = oneshot.load_oneshot_runs(folder)
    b = oneshot.load_oneshot_runs(z)
    assert [r.name for r in a] == [r.name for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.answers, rb.answers)
        assert ra.query_names == rb.query_names
    assert oneshot.oneshot_accuracy(a, _mean_embed) == oneshot.oneshot_accuracy(b, _mean_embed)


def test_errors(tmp_path):
    with pytest.raises(SiamsearchError, match="does not exist"):
        oneshot.load_oneshot_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiamsearchError, match="no one-shot runs"):
        oneshot.load_oneshot_runs(tmp_path / "empty")
    folder = make_oneshot_runs(tmp_path / "bad")
    (folder / "run01" / "class_labels.txt").write_text("run01/test/item01.png run01/training/class09.png\n")
    with pytest.raises(SiamsearchError, match="class09"):
        oneshot.load_oneshot_runs(folder)
    runs = oneshot.load_oneshot_runs(make_oneshot_runs(tmp_path / "ok"))
    with pytest.raises(SiamsearchError, match="embed_fn"):
        oneshot.oneshot_accuracy(runs, lambda ims: np.zeros((1, 2)))


@pytest.mark.shared
def test_official_runs(shared_data):
    runs = oneshot.load_oneshot_runs(shared_data / "omniglot" / "all_runs.zip")
    assert len(runs) == 20 and all(r.ways == 20 and len(r.queries) == 20 for r in runs)
    # raw pixels as the embedding: well above chance (1/20), far below a trained network
    pixels = lambda ims: np.stack([np.asarray(im.convert("L").resize((28, 28)), np.float32).ravel() for im in ims])  # noqa: E731
    acc = oneshot.oneshot_accuracy(runs, pixels)
    assert 0.05 < acc < 0.9


def test_nan_embeddings_are_refused(tmp_path):
    """A diverged model gives NaN embeddings: an error, not a silent 1/N accuracy."""
    runs = oneshot.load_oneshot_runs(make_oneshot_runs(tmp_path / "all_runs"))

    def nan_embed(images):
        e = _mean_embed(images)
        e[1, 0] = np.nan
        return e

    for score in (oneshot.oneshot_accuracy, oneshot.oneshot_per_run, oneshot.oneshot_metrics):
        with pytest.raises(SiamsearchError, match="NaN"):
            score(runs, nan_embed)
    with pytest.raises(SiamsearchError, match="NaN or infinite"):
        oneshot.run_predictions(runs[0], lambda ims: np.full((len(ims), 2), np.inf, np.float32))
