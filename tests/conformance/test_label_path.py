"""Service-independent parts of the suite: >65,535 labels through the codec, the response and label files;
the reference comparison's tolerances."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from opsef_orchestrator.io import read_image, write_labels
from opsef_protocol.codec import from_tensor, to_tensor
from opsef_protocol.v1 import segmenter_pb2 as pb

from tests.conformance import reference
from tests.conformance._support import many_blobs


def _many_labels() -> np.ndarray:
    from scipy import ndimage as ndi

    img, n = many_blobs()
    labels, found = ndi.label(img > 0)
    assert found == n == 70_000
    return labels.astype(np.uint32)


def test_more_than_65535_labels_through_codec_response_and_files(tmp_path: Path) -> None:
    labels = _many_labels()
    resp = pb.SegmentResponse(labels=to_tensor(labels, "YX"), object_count=70_000, model="m")
    back = pb.SegmentResponse.FromString(resp.SerializeToString())
    decoded, axes = from_tensor(back.labels)
    assert axes == "YX" and decoded.dtype == np.uint32 and back.object_count == 70_000
    assert np.array_equal(decoded, labels) and int(decoded.max()) == 70_000
    write_labels(tmp_path / "labels.tif", decoded)
    again = read_image(tmp_path / "labels.tif").data
    assert again.dtype.itemsize >= 4 and np.array_equal(again.astype(np.uint32), labels)


def test_reference_comparison_accepts_noise_and_catches_changes() -> None:
    from opsef_orchestrator.synthetic import synthetic_nuclei

    img, gt = synthetic_nuclei((128, 128), n=20, seed=3)
    n = int(gt.max())
    doc = {"inputs": {"a": {"shape": [128, 128], "objects": n, "f1@0.5": 1.0}}}
    stored = {"a": gt}
    # the same labels with a few boundary pixels changed: within tolerance
    noisy = gt.copy()
    edge = (gt > 0) & (np.roll(gt, 1, 0) == 0)
    noisy[np.flatnonzero(edge.ravel())[::3] // 128, np.flatnonzero(edge.ravel())[::3] % 128] = 0
    assert reference.compare(doc, stored, {"a": {"shape": [128, 128], "objects": n, "f1@0.5": 1.0}}, {"a": noisy}) == []
    # half the objects gone: count, F1 and stored-labels checks all fail
    dropped = np.where(gt % 2 == 0, gt, 0).astype(np.uint32)
    cur = {"a": {"shape": [128, 128], "objects": int(len(np.unique(dropped)) - 1), "f1@0.5": 0.6}}
    problems = reference.compare(doc, stored, cur, {"a": dropped})
    assert len(problems) == 3 and all(p.startswith("a: ") for p in problems)
    # inputs missing here (no real data) are left out, not failed
    assert reference.compare(doc, stored, {}, {}) == []
