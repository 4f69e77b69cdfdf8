"""The content-addressed store behind the label, preprocessing and analysis caches."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opsef_orchestrator.cache import ContentCache, code_digest, content_key, link_or_copy


@pytest.fixture()
def store(tmp_path: Path) -> ContentCache:
    return ContentCache(tmp_path / "cache")


def test_keys_depend_on_every_part_and_kind_but_not_dict_order() -> None:
    assert ContentCache.key("a", {"x": 1, "y": 2}) == ContentCache.key("a", {"y": 2, "x": 1})
    assert ContentCache.key("a", 1) != ContentCache.key("b", 1)
    assert ContentCache.key("a", 1) != ContentCache.key("a", 1.5)
    assert ContentCache.key("a", [1, 2]) != ContentCache.key("a", [2, 1])
    assert len(content_key("x")) == 64


def test_round_trips(store: ContentCache) -> None:
    k = store.key("t", 1)
    table = pd.DataFrame({"label": np.array([1, 2], np.int64), "area": [3.5, 4.25], "kept": [True, False]})
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    store.put_frame("tables", k, table)
    store.put_array("arrays", k, arr)
    store.put_json("json", k, {"a": [1, 2.5, None]})
    store.put_pngs("pngs", k, {"one": b"\x89PNG\x00\xff", "two": b""})
    pd.testing.assert_frame_equal(store.get_frame("tables", k), table)
    got = store.get_array("arrays", k)
    assert got.dtype == np.uint8 and (got == arr).all()
    assert store.get_json("json", k) == {"a": [1, 2.5, None]}
    assert store.get_pngs("pngs", k) == {"one": b"\x89PNG\x00\xff", "two": b""}
    assert store.stats() == {"hits": {"arrays": 1, "json": 1, "pngs": 1, "tables": 1}, "misses": {}}
    assert not [p for p in store.root.rglob("*") if ".part" in p.name]


def test_misses_are_counted_and_a_missing_key_is_none(store: ContentCache) -> None:
    k = store.key("t", 2)
    assert store.get_frame("tables", k) is None and store.get_array("arrays", k) is None
    assert store.get_json("json", k) is None and store.get_pngs("pngs", k) is None
    assert store.stats()["misses"] == {"arrays": 1, "json": 1, "pngs": 1, "tables": 1}


@pytest.mark.parametrize("suffix, kind", [(".parquet", "tables"), (".npy", "arrays"), (".json", "json")])
def test_damaged_entries_are_misses(store: ContentCache, suffix: str, kind: str) -> None:
    k = store.key(kind, 3)
    path = store.path(kind, k, suffix)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage cut by a kill")
    get = {"tables": store.get_frame, "arrays": store.get_array, "json": store.get_json}[kind]
    assert get(kind, k) is None
    assert store.stats()["misses"] == {kind: 1}


def test_disabled_cache_stores_nothing(tmp_path: Path) -> None:
    off = ContentCache(None)
    k = off.key("t", 1)
    off.put_json("json", k, [1])
    assert off.get_json("json", k) is None and not off.has("json", k, ".json")
    assert not off.link_out("json", k, ".json", tmp_path / "x.json")
    with pytest.raises(ValueError, match="disabled"):
        off.path("json", k, ".json")


def test_link_out_links_the_entry(store: ContentCache, tmp_path: Path) -> None:
    k = store.key("labels", 1)
    store.put_bytes("labels", k, b"labels", ".tif")
    dst = tmp_path / "run" / "labels" / "a.tif"
    assert store.link_out("labels", k, ".tif", dst)
    assert dst.read_bytes() == b"labels"
    assert os.stat(dst).st_ino == os.stat(store.path("labels", k, ".tif")).st_ino  # a hard link, no copy
    assert os.stat(dst).st_mode & 0o777 == 0o444  # read-only: editing the output in place cannot change the cache
    assert not store.link_out("labels", store.key("labels", 2), ".tif", tmp_path / "b.tif")
    assert not (tmp_path / "b.tif").exists()


def test_link_or_copy_replaces_atomically(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "out" / "dst.bin"
    src.write_bytes(b"new")
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"new"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst.bin"]


def test_unwritable_cache_is_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    store = ContentCache(blocker)
    k = store.key("t", 1)
    store.put_json("json", k, [1])  # logged, not raised: the run's own outputs are what matter
    assert store.get_json("json", k) is None


def test_code_digest_changes_with_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "opsef_probe_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_digest("opsef_probe_module")
    (tmp_path / "opsef_probe_module.py").write_text("VALUE = 2\n")
    code_digest.cache_clear()
    assert code_digest("opsef_probe_module") != before
    with pytest.raises(ValueError, match="no module"):
        code_digest("opsef_no_such_module")
