"""The README's Python API example runs as written (on generated images), so it cannot drift."""
import re
from pathlib import Path

from conftest import make_identity_folders

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("<!-- section: api -->")[1].split("<!-- /section: api -->")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    make_identity_folders(tmp_path / "faces" / "train", n_ids=6, per_id=4, size=20)
    val = make_identity_folders(tmp_path / "faces" / "val", n_ids=4, per_id=4, size=20, seed=1)
    for old, new in (("id_0", "ann"), ("id_1", "bob")):
        (val / old).rename(val / new)
        for i, f in enumerate(sorted((val / new).iterdir()), 1):
            f.rename(f.with_name(f"{i}.png"))
    monkeypatch.chdir(tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "model.pt").exists() and (tmp_path / "index" / "faces" / "faiss.index").exists()
    assert (tmp_path / "runs" / "faces-eval" / "report.html").exists()
