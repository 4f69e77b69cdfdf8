"""One self-contained HTML report per run.

Everything is inline: CSS in a ``<style>`` element, pictures as base64 PNG
``data:`` URIs, tables as HTML; no scripts, fonts or external URLs, so the
file opens offline and can be mailed or archived.

Examples
--------
>>> import numpy as np, pandas as pd, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "report.html"
>>> _ = write_report(p, title="run 1", images={"tile": np.zeros((4, 4, 3), np.uint8)},
...                  leaderboard=pd.DataFrame({"rank": [1], "model": ["m"], "mAP": [0.5]}),
...                  run_record={"seed": 0})
>>> html = p.read_text(); "data:image/png;base64," in html and "http" not in html
True
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .overlays import array_to_png, figure_to_png
from .tables import atomic_write_bytes

__all__ = ["png_data_uri", "render_report", "write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
h3{font-size:14px;margin:14px 0 6px} .meta{color:#666;font-size:12px}
table.df{border-collapse:collapse;font-size:12px;margin:6px 0} table.df th,table.df td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.df th{background:#f3f3f3} table.df tr:nth-child(even) td{background:#fafafa}
table.df tbody tr:first-child td{font-weight:600}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top} figcaption{font-size:12px;color:#444}
img{max-width:100%;border:1px solid #ddd;image-rendering:pixelated}
pre{background:#f6f6f6;padding:10px;font-size:11px;overflow:auto;max-height:420px}
nav a{margin-right:12px;font-size:13px}
"""


def png_data_uri(obj: Any) -> str:
    """``data:image/png;base64,...`` of PNG bytes, an image array or a matplotlib Figure."""
    if isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
    elif isinstance(obj, np.ndarray):
        data = array_to_png(obj)
    elif hasattr(obj, "savefig"):
        data = figure_to_png(obj)
    else:
        raise ValueError(f"cannot embed {type(obj).__name__} as PNG (give bytes, an array or a Figure)")
    if not data.startswith(b"\x89PNG"):
        raise ValueError("bytes given for an image are not a PNG")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_html(name: str, obj: Any) -> str:
    return (f'<figure><img alt="{html.escape(name)}" src="{png_data_uri(obj)}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def _table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    shown = df.head(max_rows)
    out = '<div style="overflow-x:auto">' + shown.to_html(
        index=False, escape=True, classes="df", border=0, na_rep="", float_format=lambda v: f"{v:.3f}") + "</div>"
    if len(df) > max_rows:
        out += f'<p class="meta">{len(df) - max_rows} more rows not shown</p>'
    return out


_LB_KEEP = ("f1@0.5", "ap@0.5", "ap@0.75", "ap@0.9", "f1@0.5_image_mean")


def _anchor(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower())


def render_report(
    title: str = "OpSeF run",
    montages: Mapping[str, Any] | None = None,
    leaderboard: pd.DataFrame | None = None,
    plots: Mapping[str, Any] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    run_record: Mapping[str, Any] | str | None = None,
    images: Mapping[str, Any] | None = None,
    notes: str | None = None,
    compact_leaderboard: bool = True,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    sections: list[tuple[str, str]] = []
    if notes:
        sections.append(("Notes", f"<p>{html.escape(notes)}</p>"))
    if leaderboard is not None:
        lb = leaderboard
        if compact_leaderboard and "mAP" in lb.columns:
            per_thr = [c for c in lb.columns if "@" in c and c not in _LB_KEEP]
            lb = lb.drop(columns=per_thr + [c for c in ("tp", "fp", "fn") if c in lb.columns])
        body = ('<p class="meta">Micro-averaged over images; AP = TP/(TP+FP+FN) (DSB2018/StarDist), '
                "mAP = mean AP over IoU 0.5:0.95.</p>" + _table_html(lb))
        sections.append(("Evaluation leaderboard", body))
    if montages:
        sections.append(("Montages", "".join(_figure_html(k, v) for k, v in montages.items())))
    if images:
        sections.append(("Overlays", "".join(_figure_html(k, v) for k, v in images.items())))
    if plots:
        sections.append(("Plots", "".join(_figure_html(k, v) for k, v in plots.items())))
    if tables:
        sections.append(("Tables", "".join(f"<h3>{html.escape(k)}</h3>" + _table_html(v) for k, v in tables.items())))
    if run_record is not None:
        txt = run_record if isinstance(run_record, str) else json.dumps(run_record, indent=2, default=str,
                                                                         sort_keys=False)
        sections.append(("Run record", f"<pre>{html.escape(txt)}</pre>"))
    now = _dt.datetime.now().isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{_anchor(n)}">{html.escape(n)}</a>' for n, _ in sections)
    body = "".join(f'<section id="{_anchor(n)}"><h2>{html.escape(n)}</h2>{b}</section>' for n, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">generated {now} by OpSeF</p><nav>{nav}</nav>{body}"
        "</body></html>\n"
    )


def write_report(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the self-contained HTML report of a run (atomically).

    Parameters
    ----------
    path : path
        The ``.html`` file.
    title : str
    montages : mapping name -> Figure / image array / PNG bytes
        Per image montages (pipelines x models, :func:`~opsef_orchestrator.overlays.montage_figure`).
    leaderboard : DataFrame, optional
        From :func:`opsef_orchestrator.evaluation.leaderboard`.
    plots : mapping name -> Figure / array / PNG bytes
    tables : mapping name -> DataFrame (first 200 rows shown)
    run_record : dict or str
        The run's configuration / provenance, shown as JSON.
    images : mapping name -> overlay arrays
    notes : str
    compact_leaderboard : bool
        Show only the main leaderboard columns (F1/AP at 0.5, AP at 0.75/0.9, mAP, IoU, splits, merges).
    """
    text = render_report(**kwargs)
    if "http://" in text or "https://" in text:
        logger.warning("report text contains a URL (from user-supplied content); it is not loaded by the page")
    p = atomic_write_bytes(path, text.encode("utf-8"))
    logger.info("wrote report %s (%.1f kB)", p, len(text) / 1024)
    return p
