"""GPU out of memory, forced on a CPU: the engine retries with smaller tiles, then on a CPU endpoint.

The server's test hook ``OPSEF_TEST_OOM_ABOVE_PIXELS`` makes a real service answer
RESOURCE_EXHAUSTED with reason ``out_of_memory`` for images above a pixel count,
exactly as an adapter does when the GPU runs out of memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import yaml

from opsef_orchestrator.client import SegmentError
from opsef_orchestrator.config import load_config
from opsef_orchestrator.engine import run
from opsef_orchestrator.evaluation import match_labels
from opsef_orchestrator.io import read_image, write_image
from opsef_orchestrator.manager import ServiceManager
from opsef_orchestrator.synthetic import synthetic_nuclei

from tests.conformance._support import ServiceProcess, copy_template, start_service

pytestmark = pytest.mark.slow
MODEL = "mynet:threshold_watershed"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    """Three copies of the template service: OOM above 70,000 pixels, OOM always (tiles >= 128^2), and a CPU one."""
    root = tmp_path_factory.mktemp("oom")
    sdir = copy_template(root / "services", "mynet")
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["small_gpu"] = start_service(sdir, root / "small_gpu", oom_pixels=70_000, copy_models=False)
        procs["tiny_gpu"] = start_service(sdir, root / "tiny_gpu", oom_pixels=1_000, copy_models=False)
        procs["cpu"] = start_service(sdir, root / "cpu", oom_pixels=0, copy_models=False)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("oom-inputs")
    img, gt = synthetic_nuclei((600, 560), n=60, seed=21)
    write_image(d / "images" / "nuclei.tif", img, "YX")
    return d / "images", gt


def _run(tmp: Path, images: Path, endpoint: str, **execution) -> tuple[dict, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "oom",
        "inputs": [{"path": str(images)}],
        "models": [{"model": MODEL}],
        "tiling": {"tile_size": 512, "overlap": 32},
        "outputs": {"root": str(tmp / "runs"), "report": False, "overlays": False},
        "execution": {"attempts": 1, "restart_dead_services": False, **execution},
        "endpoints": {"mynet": endpoint},
    }))
    cfg = load_config(cfg_path)
    result = run(cfg, manager=ServiceManager(state_dir=tmp / "state", endpoints={"mynet": endpoint}))
    entries = [json.loads(line) for line in (result.run_dir / "jobs.jsonl").read_text().splitlines()]
    assert len(entries) == 1
    return entries[0], result.run_dir


def test_the_hook_gives_out_of_memory_with_its_reason(services: dict[str, ServiceProcess]) -> None:
    c = services["small_gpu"].client
    assert c.segment(np.zeros((256, 256), np.uint8), "YX", "threshold_watershed").labels.shape == (256, 256)
    with pytest.raises(SegmentError) as info:
        c.segment(np.zeros((300, 300), np.uint8), "YX", "threshold_watershed")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.reason == "out_of_memory"


def test_out_of_memory_is_retried_with_smaller_tiles(services: dict[str, ServiceProcess], image: tuple[Path, np.ndarray],
                                                     tmp_path: Path) -> None:
    images, gt = image
    entry, run_dir = _run(tmp_path, images, services["small_gpu"].address)
    assert entry["status"] == "ok", entry
    assert entry["tile_size"] == 256 and entry["requests"] >= 6 and "cpu_fallback" not in entry
    labels = read_image(run_dir / entry["labels"]).data
    assert labels.shape == gt.shape and match_labels(gt, labels, 0.5).f1 > 0.7


def test_out_of_memory_at_the_smallest_tiles_falls_back_to_the_cpu_endpoint(
        services: dict[str, ServiceProcess], image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    images, gt = image
    cpu = services["cpu"].address
    entry, run_dir = _run(tmp_path / "with", images, services["tiny_gpu"].address, cpu_fallback={"mynet": cpu})
    assert entry["status"] == "ok", entry
    assert entry["cpu_fallback"] == cpu and entry["tile_size"] == 512
    labels = read_image(run_dir / entry["labels"]).data
    assert match_labels(gt, labels, 0.5).f1 > 0.7
    # without a CPU endpoint the job fails with the reason, and the run goes on
    entry, _ = _run(tmp_path / "without", images, services["tiny_gpu"].address)
    assert entry["status"] == "failed" and entry["error"].startswith("RESOURCE_EXHAUSTED") and "out of memory" in entry["error"]
