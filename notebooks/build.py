"""Build the example notebooks (``notebooks/*.ipynb``) from their readable sources.

Each notebook is written as a plain Python file in ``notebooks/sources/``, cut
into cells by ``# %%`` lines (code) and ``# %% [markdown]`` lines (Markdown,
every line a ``# `` comment); in code cells a comment ``# %magic`` becomes the
IPython magic ``%magic`` (so the sources stay plain Python). The stored notebooks carry no outputs and are
byte-for-byte reproducible (fixed cell ids, sorted keys), so::

    python notebooks/build.py           # regenerate every notebook
    python notebooks/build.py --check   # exit 1 if a stored notebook is stale (CI)

Edit the sources, never the ``.ipynb`` files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat import v4

__all__ = ["HERE", "SOURCES", "notebook_from_source", "render", "targets", "main"]

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _cells(text: str) -> list[tuple[str, str]]:
    """Split a source file into ``(kind, text)`` cells (kind: "code" or "markdown")."""
    cells: list[tuple[str, list[str]]] = []
    kind, lines = None, []
    for line in text.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                cells.append((kind, lines))
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
        elif kind is None:
            if line.strip():
                raise ValueError(f"text before the first '# %%' line: {line!r}")
        else:
            lines.append(line)
    if kind is not None:
        cells.append((kind, lines))
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not ln.startswith("#")]
            if bad:
                raise ValueError(f"markdown cell line is not a comment: {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines]
        else:
            lines = [ln[2:] if ln.startswith("# %") else ln for ln in lines]  # "# %matplotlib inline" -> magic
        if lines:
            out.append((kind, "\n".join(lines)))
    return out


def notebook_from_source(path: Path) -> nbformat.NotebookNode:
    """The notebook (no outputs, fixed cell ids) of one source file."""
    nb = v4.new_notebook()
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    for i, (kind, text) in enumerate(_cells(path.read_text(encoding="utf-8"))):
        cell = v4.new_markdown_cell(text) if kind == "markdown" else v4.new_code_cell(text)
        cell.id = f"{path.stem[:2]}-{i:03d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text stored for a notebook."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def targets() -> dict[Path, Path]:
    """Source file -> notebook file, for every source."""
    return {src: HERE / f"{src.stem}.ipynb" for src in sorted(SOURCES.glob("[0-9][0-9]_*.py"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the stored notebooks are up to date")
    args = parser.parse_args(argv)
    stale = []
    for src, dst in targets().items():
        text = render(notebook_from_source(src))
        current = dst.read_text(encoding="utf-8") if dst.is_file() else None
        if current == text:
            continue
        stale.append(dst.name)
        if not args.check:
            dst.write_text(text, encoding="utf-8")
            print(f"wrote {dst.relative_to(HERE.parent)}")
    orphans = sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb") if p not in targets().values())
    if args.check:
        for name in stale:
            print(f"stale: notebooks/{name} (run: python notebooks/build.py)", file=sys.stderr)
        for name in orphans:
            print(f"orphan: notebooks/{name} has no source in notebooks/sources/", file=sys.stderr)
        return 1 if stale or orphans else 0
    if not stale:
        print("notebooks are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
