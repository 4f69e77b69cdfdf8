"""U-Net and Cellpose services over real gRPC: their starter models on a real val image, their knobs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.evaluation import match_labels
from opsef_orchestrator.io import read_image
from opsef_orchestrator.paths import services_root

pytestmark = pytest.mark.slow
VAL_IMAGE = "0e132f71c8b4875c3c2dd7a22997468a3e842b46aa9bd47cf7b0e8b7d63f0925"
# F1@0.5 on VAL_IMAGE measured through each service; the floors leave a margin.
FLOORS = {"unet": ("unet_dsb2018_starter", 0.84, 0.7), "cellpose": ("cellpose_dsb2018_starter", None, 0.6)}


def _starter(service: str) -> str:
    model = FLOORS[service][0]
    if not (services_root() / service / "models" / model / "manifest.yaml").is_file():
        pytest.skip(f"{service}:{model} is not in the repository")
    return model


@pytest.fixture(params=["unet", "cellpose"])
def family(request: pytest.FixtureRequest) -> tuple[str, SegmenterClient]:
    _starter(request.param)
    return request.param, request.getfixturevalue(request.param)


def test_info_and_models(family: tuple[str, SegmenterClient]) -> None:
    service, client = family
    info = client.info()
    assert info.service_name == service and info.device == "cpu"
    assert info.framework == {"unet": "tensorflow", "cellpose": "pytorch"}[service]
    model = {m.name: m for m in client.models()}[_starter(service)]
    assert model.weights_present and model.source == "project"
    assert model.metrics["dsb2018_val/f1@0.5"] > 0.4


def test_starter_on_real_val_image(family: tuple[str, SegmenterClient], shared_data: Path) -> None:
    service, client = family
    img = read_image(shared_data / "dsb2018" / "val" / "images" / f"{VAL_IMAGE}.png").data[..., :3]
    gt = read_image(shared_data / "dsb2018" / "val" / "masks" / f"{VAL_IMAGE}.tif").data
    res = client.segment(img, "YXC", _starter(service))
    assert res.labels.shape == gt.shape and res.labels.dtype == np.uint32
    assert match_labels(gt, res.labels, 0.5).f1 >= FLOORS[service][2]


def test_unet_object_step_parameters(unet: SegmenterClient) -> None:
    from opsef_orchestrator.synthetic import synthetic_nuclei

    model = _starter("unet")
    img, gt = synthetic_nuclei((160, 170), n=12, seed=2)
    base = unet.segment(img, "YX", model)
    assert base.object_count > 3 and match_labels(gt, base.labels, 0.5).f1 > 0.6
    none = unet.segment(img, "YX", model, {"min_size": 100000})
    assert none.object_count == 0
    assert base.parameters["foreground_threshold"] > 0


def test_cellpose_scale_factor(cellpose: SegmenterClient, shared_data: Path) -> None:
    model = _starter("cellpose")
    img = read_image(shared_data / "dsb2018" / "val" / "images" / f"{VAL_IMAGE}.png").data[..., :3]
    counts = {s: cellpose.segment(img, "YXC", model, {"scale": s}).object_count for s in (0.5, 1.0)}
    assert counts[1.0] > 0
    assert counts[0.5] != counts[1.0] or counts[0.5] > 0
