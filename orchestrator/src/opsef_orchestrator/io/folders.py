"""Folders of images: list the files a run should process (OpSeF's ``subset``)."""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable, Sequence

from opsef_orchestrator.io.readers import IMAGE_EXTENSIONS

__all__ = ["list_images", "matches"]

_WILDCARDS = set("*?[")


def _as_list(patterns: str | Sequence[str] | None) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def matches(relpath: str, pattern: str) -> bool:
    """Whether a relative path matches one include/exclude pattern.

    A pattern with a wildcard (``*``, ``?``, ``[``) is a glob matched against
    the file name and against the relative path (with ``/``); a pattern without
    one matches when it occurs anywhere in the relative path (as OpSeF's
    ``subset`` substrings did). Matching is case-sensitive.

    Examples
    --------
    >>> matches("kidney/tile_001.tif", "tile_0*.tif"), matches("kidney/tile_001.tif", "kidney")
    (True, True)
    >>> matches("kidney/tile_001.tif", "*.png")
    False
    """
    if _WILDCARDS & set(pattern):
        name = relpath.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(relpath, pattern)
    return pattern in relpath


def list_images(folder: str | os.PathLike[str], include: str | Sequence[str] | None = None,
                exclude: str | Sequence[str] | None = None, *, recursive: bool = False,
                extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The image files of a folder, sorted, filtered by include/exclude patterns.

    Parameters
    ----------
    folder : str or Path
        The folder to list.
    include : str or sequence of str, optional
        Keep only files matching at least one pattern (see :func:`matches`).
    exclude : str or sequence of str, optional
        Drop files matching any pattern (applied after ``include``).
    recursive : bool
        Also list sub-folders. Hidden files and folders (starting with ``.``)
        are always skipped.
    extensions : iterable of str
        File name endings to consider (case-insensitive).

    Returns
    -------
    list of Path
        Sorted by relative path.

    Raises
    ------
    ValueError
        When ``folder`` is not a folder.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n in ("a1.tif", "a2.png", "b1.tif", "notes.txt"):
    ...     _ = (d / n).write_bytes(b"")
    >>> [p.name for p in list_images(d)]
    ['a1.tif', 'a2.png', 'b1.tif']
    >>> [p.name for p in list_images(d, include="a*", exclude=["*.png"])]
    ['a1.tif']
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: folder does not exist or is not a folder")
    exts = tuple(e.lower() for e in extensions)
    inc, exc = _as_list(include), _as_list(exclude)
    found: list[tuple[str, Path]] = []
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(exts):
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            if inc and not any(matches(rel, p) for p in inc):
                continue
            if any(matches(rel, p) for p in exc):
                continue
            found.append((rel, path))
    return [p for _, p in sorted(found)]
