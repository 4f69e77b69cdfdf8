"""Reference outputs of the shipped models: a small fixed input set, object counts, F1 and stored labels.

``tests/conformance/reference/<service>__<model>.json`` holds, per input, the
object count, F1@0.5 against the input's ground truth, and the sha256 of the
labels; ``<service>__<model>.npz`` holds the labels themselves. A later run
must give counts within :data:`COUNT_TOLERANCE`, F1 within
:data:`F1_TOLERANCE`, and labels that match the stored ones with F1@0.5 of at
least :data:`STORED_MATCH_F1`: loose enough for CPU/GPU and thread-count
nondeterminism (a few boundary pixels, an object at a threshold), tight enough
that a dependency or code change that alters results fails.

Generate or update them (after a deliberate change, reviewed in the diff) with::

    .venv/bin/python -m pytest tests/conformance -k reference --update-reference [--service-dir services/NAME]
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from opsef_orchestrator.evaluation import match_labels
from opsef_orchestrator.paths import shared_data_dir
from opsef_orchestrator.synthetic import synthetic_nuclei

__all__ = ["REFERENCE_DIR", "VAL_IMAGES", "COUNT_TOLERANCE", "F1_TOLERANCE", "STORED_MATCH_F1", "reference_inputs",
           "compute", "compare", "save", "load"]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
#: DSB2018 val images (fluorescence small and crowded, one H&E), read from ../shared/data when present.
VAL_IMAGES = (
    "0e132f71c8b4875c3c2dd7a22997468a3e842b46aa9bd47cf7b0e8b7d63f0925",
    "43a71aeb641faa18742cb826772a8566c6c947d7050f9ab15459de6cc2b3b6af",
    "3c4c675825f7509877bc10497f498c9a2e3433bf922bd870914a2eb21a54fd26",
)
#: Synthetic inputs: (shape, nuclei, seed).
SYNTHETIC = (((256, 256), 25, 11), ((201, 299), 18, 12))
#: |count - reference| <= max(absolute, relative * reference).
COUNT_TOLERANCE = (2, 0.05)
F1_TOLERANCE = 0.05
STORED_MATCH_F1 = 0.9


def reference_inputs(axes: list[str]) -> list[tuple[str, np.ndarray, str, np.ndarray]]:
    """``(name, image, axes, ground truth)`` of the fixed input set for a model accepting ``axes``.

    Real images are sent as RGB (``YXC``) when the model accepts it, else as grey ``YX``.
    """
    out = []
    for shape, n, seed in SYNTHETIC:
        img, gt = synthetic_nuclei(shape, n=n, seed=seed)
        out.append((f"synthetic_{shape[0]}x{shape[1]}_s{seed}", img, "YX", gt))
    data = shared_data_dir()
    if data is not None and (data / "dsb2018" / "val").is_dir():
        from opsef_orchestrator.io import read_image

        for stem in VAL_IMAGES:
            img = read_image(data / "dsb2018" / "val" / "images" / f"{stem}.png").data[..., :3]
            gt = read_image(data / "dsb2018" / "val" / "masks" / f"{stem}.tif").data
            if "YXC" in axes:
                out.append((f"dsb2018_val_{stem[:12]}", np.ascontiguousarray(img), "YXC", gt))
            else:
                out.append((f"dsb2018_val_{stem[:12]}", img.mean(axis=-1).astype(np.float32), "YX", gt))
    if "YX" not in axes:
        out = [(n, i[..., None], "YXC", g) if a == "YX" else (n, i, a, g) for n, i, a, g in out]
    return out


def _sha(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint32).tobytes()).hexdigest()


def compute(segment: Any, model: str, axes: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Run the input set through ``segment(image, axes, model)``; returns per-input results and labels."""
    results, labels = {}, {}
    for name, img, ax, gt in reference_inputs(axes):
        res = segment(img, ax, model)
        lab = res.labels
        results[name] = {"shape": list(lab.shape), "axes": ax, "gt_objects": int(len(np.unique(gt)) - 1),
                         "objects": int(res.object_count), "f1@0.5": round(float(match_labels(gt, lab, 0.5).f1), 4),
                         "labels_sha256": _sha(lab)}
        labels[name] = lab
    return results, labels


def save(path: Path, header: dict[str, Any], results: dict[str, dict[str, Any]], labels: dict[str, np.ndarray]) -> None:
    """Write ``path`` (.json) and its labels (.npz beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**header, "tolerance": {"count_abs": COUNT_TOLERANCE[0], "count_rel": COUNT_TOLERANCE[1], "f1": F1_TOLERANCE,
                                   "stored_match_f1": STORED_MATCH_F1}, "inputs": results}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    packed = {k: (v.astype(np.uint16) if v.max(initial=0) < 65536 else v) for k, v in labels.items()}
    np.savez_compressed(path.with_suffix(".npz"), **packed)


def load(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    doc = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz")) as z:
        labels = {k: z[k].astype(np.uint32) for k in z.files}
    return doc, labels


def compare(doc: dict[str, Any], stored: dict[str, np.ndarray], results: dict[str, dict[str, Any]],
            labels: dict[str, np.ndarray]) -> list[str]:
    """Differences beyond the tolerances, one line each (empty: the model still gives the reference results).

    Inputs of the reference that are not available here (no real data) are left out.
    """
    problems = []
    for name, ref in doc["inputs"].items():
        if name not in results:
            continue
        cur = results[name]
        if cur["shape"] != ref["shape"]:
            problems.append(f"{name}: labels of shape {cur['shape']}, reference {ref['shape']}")
            continue
        allowed = max(COUNT_TOLERANCE[0], COUNT_TOLERANCE[1] * ref["objects"])
        if abs(cur["objects"] - ref["objects"]) > allowed:
            problems.append(f"{name}: {cur['objects']} objects, reference {ref['objects']} (tolerance {allowed:g})")
        if abs(cur["f1@0.5"] - ref["f1@0.5"]) > F1_TOLERANCE:
            problems.append(f"{name}: F1@0.5 vs ground truth {cur['f1@0.5']:.3f}, reference {ref['f1@0.5']:.3f}")
        if name in stored and (stored[name].any() or labels[name].any()):
            f1 = match_labels(stored[name], labels[name], 0.5).f1
            if f1 < STORED_MATCH_F1:
                problems.append(f"{name}: labels match the stored reference labels with F1@0.5 {f1:.3f} < {STORED_MATCH_F1}")
    return problems
