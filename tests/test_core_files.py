"""The one atomic writer and the one fingerprint check."""
import json
import os

import pytest

from siamsearch.core.errors import FingerprintMismatch, check_fingerprint
from siamsearch.core.files import atomic_path, write_json_atomic


def test_atomic_path_replaces_only_on_success_and_creates_the_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.txt"
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and not target.exists()
        with open(tmp, "w") as f:
            f.write("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temporary left behind


def test_write_json_atomic_keeps_or_sorts_key_order(tmp_path):
    p = tmp_path / "r.json"
    write_json_atomic(p, {"b": 1, "a": "é"})
    assert p.read_text(encoding="utf-8").index('"b"') < p.read_text(encoding="utf-8").index('"a"')
    write_json_atomic(p, {"b": 1, "a": "é"}, sort_keys=True)
    text = p.read_text(encoding="utf-8")
    assert text.index('"a"') < text.index('"b"') and json.loads(text) == {"a": "é", "b": 1}


def test_check_fingerprint_names_both_models_and_the_fix():
    check_fingerprint("abc", "abc", made="index/x was built with", what="the given model", fix="rebuild")
    with pytest.raises(FingerprintMismatch) as e:
        check_fingerprint("abc", "def", made="index/x was built with", what="the given model", fix="rebuild it")
    assert str(e.value) == "index/x was built with model abc, but the given model is model def; rebuild it"


def test_local_path_refuses_urls_and_keeps_paths():
    from siamsearch.core.errors import SiamsearchError
    from siamsearch.core.files import local_path

    for url in ("s3://bucket/gallery", "gs://b/x", "https://host/m.pt", "file:///tmp/x"):
        with pytest.raises(SiamsearchError, match="mount the bucket"):
            local_path(url, "gallery folder")
    for path in ("index/faces", "/mnt/s3/gallery", "C:/data", "weird:name"):
        assert local_path(path, "gallery folder") == path
