"""Result tables: CSV (default or European dialect) and parquet, written atomically.

The European dialect uses ``;`` as separator and ``,`` as decimal mark, which
is what spreadsheet programs expect in most European locales.

Examples
--------
>>> import pandas as pd, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = write_table(pd.DataFrame({"label": [1], "area": [2.5]}), d / "t.csv", dialect="european")
>>> p.read_text().splitlines()
['label;area', '1;2,5']
>>> read_table(p, dialect="european")["area"].tolist()
[2.5]
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = ["DIALECTS", "write_table", "read_table", "atomic_write_bytes"]

logger = logging.getLogger(__name__)

#: CSV dialects: name -> (separator, decimal mark).
DIALECTS: dict[str, tuple[str, str]] = {"default": (",", "."), "european": (";", ",")}


def _dialect(dialect: str) -> tuple[str, str]:
    try:
        return DIALECTS[dialect]
    except KeyError:
        raise ValueError(f"dialect must be one of {sorted(DIALECTS)}, got {dialect!r}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then :func:`os.replace` it."""
    from opsef_orchestrator.io.writers import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    dialect: Literal["default", "european"] = "default",
    parquet: bool = False,
) -> Path:
    """Write a table as CSV (and optionally parquet beside it), atomically.

    Parameters
    ----------
    df : DataFrame
        The table; an empty table with columns gives a CSV with only a header.
    path : path
        CSV file to write (parent folders are created).
    dialect : {"default", "european"}
        ``"default"``: ``,`` separator, ``.`` decimal; ``"european"``: ``;``
        separator, ``,`` decimal.
    parquet : bool
        Also write ``path`` with the suffix ``.parquet``.

    Returns
    -------
    Path
        The CSV path.
    """
    sep, dec = _dialect(dialect)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    path = Path(path)
    text = df.to_csv(index=False, sep=sep, decimal=dec, lineterminator="\n")
    atomic_write_bytes(path, text.encode("utf-8"))
    if parquet:
        from opsef_orchestrator.io.writers import atomic_path

        out = df.copy()
        out.columns = [str(c) for c in out.columns]
        with atomic_path(path.with_suffix(".parquet")) as tmp:
            out.to_parquet(tmp, index=False)
    logger.debug("wrote %s (%d rows)", path, len(df))
    return path


def read_table(path: str | os.PathLike, dialect: Literal["default", "european"] = "default") -> pd.DataFrame:
    """Read a table written by :func:`write_table` (CSV or ``.parquet``)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    sep, dec = _dialect(dialect)
    try:
        return pd.read_csv(path, sep=sep, decimal=dec)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
