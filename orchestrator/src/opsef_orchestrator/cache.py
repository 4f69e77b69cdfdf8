"""Content-addressed store of a run root: results kept by the hash of what made them.

The run engine keeps each job's labels here (``labels``), and each preprocessed
image (``preprocessed``); the analysis after inference keeps per-job
evaluation rows, measurement tables, filtered labels and overlays, and per
image montages and plots. A key is the SHA-256 of a JSON description of
everything the result depends on (input digests, configuration, the kind of
result, the project's version and a digest of the source of the code that
makes it: :func:`code_digest`), so a changed input, parameter, release or
algorithm never meets a stale entry, and re-running a finished run recomputes
nothing.

Entries are written atomically (temporary name, then rename) and never
modified; a damaged entry (a kill during a copy, a full disk) is treated as
missing and computed again. Deleting ``<root>/.cache`` is always safe.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from opsef_orchestrator import __version__
from opsef_orchestrator.io.writers import atomic_path
from opsef_orchestrator.tables import atomic_write_bytes

__all__ = ["ContentCache", "code_digest", "content_key", "link_or_copy", "LABEL_MODULES"]

#: Orchestrator modules whose code shapes a job's labels (reading, preprocessing, tiling and stitching): part of the
#: labels' cache key, so that a change of any of them computes labels anew.
LABEL_MODULES = ("opsef_orchestrator.io.readers", "opsef_orchestrator.pipelines", "opsef_orchestrator.preprocess",
                 "opsef_orchestrator.reshape", "opsef_orchestrator.segmentation", "opsef_orchestrator.tiling")

logger = logging.getLogger(__name__)


def content_key(*parts: Any) -> str:
    """SHA-256 (hex) of a JSON description of ``parts`` (keys sorted, non-JSON values by ``str``).

    Examples
    --------
    >>> content_key("labels", {"b": 1, "a": 2}) == content_key("labels", {"a": 2, "b": 1})
    True
    >>> content_key("labels", 1) == content_key("labels", 2)
    False
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """SHA-256 (hex) of the source files of ``modules`` (default: every module of the orchestrator package).

    Part of the cache keys: results made by other code (a new release, a
    changed algorithm during development) are never reused.

    Examples
    --------
    >>> code_digest("opsef_orchestrator.tiling") == code_digest("opsef_orchestrator.tiling")
    True
    >>> code_digest("opsef_orchestrator.tiling") != code_digest("opsef_orchestrator.measure")
    True
    """
    if modules:
        files = []
        for name in sorted(modules):
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.origin:
                raise ValueError(f"modules: no module {name!r}")
            files.append(Path(spec.origin))
    else:
        files = sorted(Path(__file__).resolve().parent.rglob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Make ``dst`` a hard link to ``src`` (a copy across file systems), atomically; returns ``dst``.

    ``src`` is made read-only first: a linked run output shares its inode with
    the cache entry, so an in-place edit of the output (an image editor saving
    over it) would otherwise change the cached result for every later run (as
    DVC does with its linked cache).
    """
    src, dst = Path(src), Path(dst)
    with contextlib.suppress(OSError):
        os.chmod(src, 0o444)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.part")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        try:
            shutil.copyfile(src, tmp)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    os.replace(tmp, dst)
    return dst


class ContentCache:
    """Entries of one kind per folder: ``<root>/<kind>/<key[:2]>/<key><suffix>``.

    Parameters
    ----------
    root : path or None
        The cache folder (a run engine uses ``<outputs.root>/.cache``); ``None``
        disables the cache (every ``get`` misses, every ``put`` is dropped).

    Examples
    --------
    >>> import tempfile
    >>> c = ContentCache(tempfile.mkdtemp())
    >>> k = c.key("example", 1)
    >>> c.get_json("example", k) is None
    True
    >>> c.put_json("example", k, {"a": [1, 2]})
    >>> c.get_json("example", k)
    {'a': [1, 2]}
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self._lock = threading.Lock()

    def stats(self) -> dict[str, dict[str, int]]:
        """Hits and misses of the ``get_*`` and ``link_out`` calls so far, per kind."""
        with self._lock:
            return {"hits": dict(sorted(self.hits.items())), "misses": dict(sorted(self.misses.items()))}

    def _count(self, kind: str, hit: bool) -> None:
        with self._lock:
            (self.hits if hit else self.misses)[kind] += 1

    @staticmethod
    def key(kind: str, *parts: Any) -> str:
        """The key of a result of ``kind`` made from ``parts`` (the project's version and code are part of every key)."""
        return content_key(kind, __version__, code_digest(), *parts)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """Where the entry ``key`` of ``kind`` lives (whether or not it exists)."""
        if self.root is None:
            raise ValueError("this cache is disabled (root=None)")
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def has(self, kind: str, key: str, suffix: str) -> bool:
        return self.root is not None and self.path(kind, key, suffix).is_file()

    # ------------------------------------------------------------------ typed entries
    def get_bytes(self, kind: str, key: str, suffix: str = ".bin") -> bytes | None:
        data = self._read_bytes(kind, key, suffix)
        self._count(kind, data is not None)
        return data

    def _read_bytes(self, kind: str, key: str, suffix: str) -> bytes | None:
        if self.root is None:
            return None
        try:
            return self.path(kind, key, suffix).read_bytes()
        except OSError:
            return None

    def put_bytes(self, kind: str, key: str, data: bytes, suffix: str = ".bin") -> None:
        if self.root is not None:
            self._quietly(lambda: atomic_write_bytes(self.path(kind, key, suffix), data))

    def get_json(self, kind: str, key: str) -> Any:
        raw = self._read_bytes(kind, key, ".json")
        value = None
        if raw is not None:
            try:
                value = json.loads(raw)
            except ValueError:
                logger.warning("cache entry %s is damaged; computing it again", self.path(kind, key, ".json"))
        self._count(kind, value is not None)
        return value

    def put_json(self, kind: str, key: str, value: Any) -> None:
        self.put_bytes(kind, key, json.dumps(value, default=str).encode(), ".json")

    def get_array(self, kind: str, key: str) -> np.ndarray | None:
        value = None
        if self.has(kind, key, ".npy"):
            try:
                value = np.load(self.path(kind, key, ".npy"), allow_pickle=False)
            except (OSError, ValueError):
                logger.warning("cache entry %s is damaged; computing it again", self.path(kind, key, ".npy"))
        self._count(kind, value is not None)
        return value

    def put_array(self, kind: str, key: str, array: np.ndarray) -> None:
        if self.root is None:
            return

        def write() -> None:
            with atomic_path(self.path(kind, key, ".npy")) as tmp:
                np.save(tmp, np.asarray(array), allow_pickle=False)
        self._quietly(write)

    def get_frame(self, kind: str, key: str) -> "Any | None":
        """A pandas DataFrame stored by :meth:`put_frame` (parquet), or None."""
        value = None
        if self.has(kind, key, ".parquet"):
            import pandas as pd

            try:
                value = pd.read_parquet(self.path(kind, key, ".parquet"))
            except Exception:  # noqa: BLE001 - any damage means: compute again
                logger.warning("cache entry %s is damaged; computing it again", self.path(kind, key, ".parquet"))
        self._count(kind, value is not None)
        return value

    def put_frame(self, kind: str, key: str, frame: Any) -> None:
        if self.root is None:
            return

        def write() -> None:
            with atomic_path(self.path(kind, key, ".parquet")) as tmp:
                frame.to_parquet(tmp, index=False)
        self._quietly(write)

    def get_pngs(self, kind: str, key: str) -> dict[str, bytes] | None:
        """A name -> PNG bytes mapping stored by :meth:`put_pngs`, or None."""
        value = self.get_json(kind, key)
        if not isinstance(value, dict):
            return None
        try:
            return {k: base64.b64decode(v) for k, v in value.items()}
        except (TypeError, ValueError):
            return None

    def put_pngs(self, kind: str, key: str, pngs: dict[str, bytes]) -> None:
        self.put_json(kind, key, {k: base64.b64encode(v).decode("ascii") for k, v in pngs.items()})

    def link_out(self, kind: str, key: str, suffix: str, dst: str | os.PathLike[str]) -> bool:
        """Link the entry to ``dst`` when it exists; returns whether it did."""
        hit = self.has(kind, key, suffix)
        self._count(kind, hit)
        if hit:
            link_or_copy(self.path(kind, key, suffix), dst)
        return hit

    @staticmethod
    def _quietly(write: Any) -> None:
        # A cache that cannot be written (full disk) costs time on the next run, never this run's results.
        try:
            write()
        except OSError as exc:
            logger.warning("could not write a cache entry: %s", exc)
