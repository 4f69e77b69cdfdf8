"""U-Net adapter tests without gRPC: object step, tiling, config validation, the real starter model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opsef_protocol.adapter import RuntimeOptions
from opsef_protocol.errors import InvalidArgument, OutOfMemory, WeightsUnavailable
from opsef_protocol.manifest import load_manifest
from opsef_unet.config import ConfigError, NetworkConfig, load_config
from opsef_unet.metrics import dataset_scores, match_counts
from opsef_unet.objects import probabilities_to_labels
from opsef_unet.pipeline import labels_from_probabilities
from opsef_unet.processing import predict_tiled, tile_starts

SERVICE_DIR = Path(__file__).resolve().parents[1]
STARTER = SERVICE_DIR / "models" / "unet_dsb2018_starter"

#: F1@0.5 of the starter on the val image below: measured 0.842 (CPU, TF 2.15.1), minus a margin.
F1_FLOOR_IMAGE = 0.70
VAL_IMAGE = "0e132f71c8b4875c3c2dd7a22997468a3e842b46aa9bd47cf7b0e8b7d63f0925"


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _probs(interior: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Probability map with certain classes: interior, boundary, the rest background."""
    p = np.zeros(interior.shape + (3,), np.float32)
    p[..., 0] = 1.0
    p[boundary] = [0.1, 0.1, 0.8]
    p[interior] = [0.05, 0.9, 0.05]
    return p


# -- object step ------------------------------------------------------------------------------------------------------
def test_touching_discs_give_two_objects() -> None:
    shape = (60, 80)
    a, b = disc(shape, (30, 28), 12), disc(shape, (30, 51), 12)   # overlapping by one pixel column
    core_a, core_b = disc(shape, (30, 28), 9), disc(shape, (30, 51), 9)
    labels = probabilities_to_labels(_probs(core_a | core_b, (a | b) & ~(core_a | core_b)))
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert labels.max() == 2
    assert set(np.unique(labels[a | b])) == {1, 2}
    assert labels[30, 28] != labels[30, 51]


def test_merged_interiors_split_by_peaks() -> None:
    shape = (60, 80)
    both = disc(shape, (30, 28), 12) | disc(shape, (30, 48), 12)
    p = _probs(both, np.zeros(shape, bool))
    assert probabilities_to_labels(p, seed_mode="components").max() == 1
    assert probabilities_to_labels(p, seed_mode="peaks", min_distance=5).max() == 2


def test_min_size_removes_small_objects() -> None:
    shape = (50, 50)
    big, small = disc(shape, (20, 20), 8), disc(shape, (42, 42), 2)
    p = _probs(big | small, np.zeros(shape, bool))
    assert probabilities_to_labels(p).max() == 2
    labels = probabilities_to_labels(p, min_size=30)
    assert labels.max() == 1 and labels[20, 20] == 1 and labels[42, 42] == 0


def test_empty_probabilities_give_no_objects() -> None:
    p = np.zeros((32, 40, 3), np.float32)
    p[..., 0] = 1.0
    assert probabilities_to_labels(p).max() == 0
    assert labels_from_probabilities(None, (7, 9), {}, {}).shape == (7, 9)


def test_thresholds_act_on_foreground() -> None:
    shape = (40, 40)
    obj = disc(shape, (20, 20), 8)
    p = np.zeros(shape + (3,), np.float32)
    p[..., 0] = 1.0
    p[obj] = [0.45, 0.35, 0.2]
    assert probabilities_to_labels(p, foreground_threshold=0.5, boundary_weight=1.0).max() == 1
    assert probabilities_to_labels(p, foreground_threshold=0.5, boundary_weight=0.0).max() == 0


# -- tiling and metrics -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(695, 697), (37, 41), (256, 256), (257, 300)])
def test_tiling_reassembles_any_size(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(0).random(shape + (1,), dtype=np.float32)
    out = predict_tiled(lambda b: np.concatenate([b, 1 - b, b * 0], axis=-1), img, tile=256, overlap=32)
    assert out.shape == shape + (3,)
    np.testing.assert_allclose(out[..., 0], img[..., 0], atol=1e-5)


def test_tile_starts_cover_the_axis() -> None:
    for n in (256, 257, 500, 695, 1000):
        starts = tile_starts(n, 256, 32)
        assert starts[0] == 0 and starts[-1] == n - 256
        assert all(b - a <= 256 - 32 for a, b in zip(starts, starts[1:]))


def test_matching_counts() -> None:
    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8], gt[10:16, 10:16] = 1, 2
    pred = np.zeros_like(gt)
    pred[2:8, 2:7], pred[0:2, 15:20] = 5, 7      # IoU 30/36 with object 1; a false positive
    assert match_counts(gt, pred) == (1, 1, 1)
    s = dataset_scores([(gt, pred), (gt, gt)])
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 1)
    assert s["ap"] == pytest.approx(3 / 5)


# -- config.json validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, key", [
    ({"depth": "three"}, "depth"),
    ({"depth": 0}, "depth"),
    ({"base_filters": 2.5}, "base_filters"),
    ({"batch_norm": 1}, "batch_norm"),
    ({"dropout": 1.5}, "dropout"),
    ({"n_classes": 2}, "n_classes"),
    ({"layers": 3}, "layers"),
])
def test_config_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        NetworkConfig.from_dict(data)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"depth": 3, "kernel_size": 9}))
    with pytest.raises(ConfigError, match="'kernel_size'"):
        load_config(tmp_path / "config.json")


def test_module_import_does_not_import_tensorflow() -> None:
    code = "import sys, opsef_unet.adapter, opsef_unet.train; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_service_yaml() -> None:
    from opsef_protocol.manifest import load_service_spec

    spec = load_service_spec(SERVICE_DIR)
    assert (spec.name, spec.adapter, spec.framework, spec.default_port) == (
        "unet", "opsef_unet.adapter:UNetAdapter", "tensorflow", 50052)


# -- runtime ------------------------------------------------------------------------------------------------------------
def test_runtime_info(runtime_info) -> None:
    import tensorflow as tf

    assert runtime_info.framework == "tensorflow"
    assert runtime_info.framework_version == tf.__version__
    assert runtime_info.device in runtime_info.devices_available
    assert runtime_info.device == ("cuda:0" if tf.config.list_physical_devices("GPU") else "cpu")
    assert {"scikit-image", "keras", "scipy"} <= set(runtime_info.library_versions)


def test_bad_device_is_rejected(runtime_info) -> None:
    from opsef_unet.adapter import UNetAdapter

    with pytest.raises(InvalidArgument, match="tpu"):
        UNetAdapter.runtime_info(RuntimeOptions(device="tpu"))
    with pytest.raises(InvalidArgument, match="cuda:99"):
        UNetAdapter.runtime_info(RuntimeOptions(device="cuda:99"))


# -- the starter model on real data -------------------------------------------------------------------------------------
def test_manifest_is_complete() -> None:
    if not (STARTER / "manifest.yaml").is_file():
        pytest.skip("starter model not trained")
    m = load_manifest(STARTER)
    assert (m.family, m.framework, m.source, m.dims, m.axes) == ("unet", "tensorflow", "project", [2], ["YX", "YXC"])
    for key in ("precision", "recall", "f1", "ap"):
        assert 0 < m.metrics[f"dsb2018_val/{key}@0.5"] <= 1
    assert {"tile_size", "tile_overlap"} <= set(m.options)
    assert {"command", "epochs", "train_time_s", "data"} <= set(m.training)


def test_bad_config_json_fails_load_naming_the_key(starter, tmp_path: Path) -> None:
    from opsef_unet.adapter import UNetAdapter

    folder = tmp_path / STARTER.name
    shutil.copytree(STARTER, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["base_filters"] = "many"
    (folder / "config.json").write_text(json.dumps(cfg))
    adapter = UNetAdapter(load_manifest(folder), folder, RuntimeOptions())
    with pytest.raises(WeightsUnavailable, match="'base_filters'"):
        adapter.load()
    cfg["base_filters"] = 8            # valid config, but the weights no longer fit
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        UNetAdapter(load_manifest(folder), folder, RuntimeOptions()).load()


@pytest.mark.parametrize("option, value", [("tile_size", 100), ("tile_overlap", 256), ("seed_mode", "blobs"),
                                           ("smooth_sigma", -1), ("color", "red")])
def test_bad_manifest_options_fail_load_naming_the_option(starter, option: str, value) -> None:
    from opsef_unet.adapter import UNetAdapter

    manifest = starter.manifest.model_copy(update={"options": {**starter.manifest.options, option: value}})
    with pytest.raises(WeightsUnavailable, match=f"'{option}'"):
        UNetAdapter(manifest, STARTER, RuntimeOptions()).load()


def test_real_val_image_f1(starter, val_samples) -> None:
    sample = next(s for s in val_samples if s.id == VAL_IMAGE)
    labels = starter.predict(sample.image, "YXC", dict(starter.manifest.defaults))
    assert labels.dtype == np.uint32 and labels.shape == sample.mask.shape
    f1 = dataset_scores([(sample.mask, labels)])["f1"]
    assert f1 >= F1_FLOOR_IMAGE, f"F1@0.5 {f1:.3f} below the floor {F1_FLOOR_IMAGE}"


@pytest.mark.parametrize("shape", [(695, 697), (37, 41)])
def test_odd_sizes_give_labels_of_the_input_shape(starter, val_samples, shape: tuple[int, int]) -> None:
    sample = val_samples[0]
    grey = sample.image.mean(axis=-1).astype(np.uint8)
    # centre the image on the largest nucleus, then crop or reflect-pad to ``shape``
    cy, cx = (int(c) for c in np.argwhere(sample.mask == np.bincount(sample.mask[sample.mask > 0]).argmax()).mean(0))
    y0 = int(np.clip(cy - shape[0] // 2, 0, max(0, grey.shape[0] - shape[0])))
    x0 = int(np.clip(cx - shape[1] // 2, 0, max(0, grey.shape[1] - shape[1])))
    img = grey[y0:y0 + shape[0], x0:x0 + shape[1]]
    img = np.pad(img, [(0, shape[0] - img.shape[0]), (0, shape[1] - img.shape[1])], mode="reflect")
    for image, axes in ((img, "YX"), (np.repeat(img[..., None], 3, axis=-1), "YXC")):
        labels = starter.predict(image, axes, dict(starter.manifest.defaults))
        assert labels.shape == shape and labels.dtype == np.uint32
        assert labels.max() > 0


def test_scale_keeps_the_input_shape(starter, val_samples) -> None:
    image = val_samples[0].image
    labels = starter.predict(image, "YXC", {**starter.manifest.defaults, "scale": 0.5})
    assert labels.shape == image.shape[:2] and labels.max() > 0


@pytest.mark.parametrize("value, dtype", [(0, np.uint8), (255, np.uint8), (0.5, np.float32)])
def test_constant_image_gives_no_objects(starter, value, dtype) -> None:
    labels = starter.predict(np.full((300, 280), value, dtype), "YX", dict(starter.manifest.defaults))
    assert labels.shape == (300, 280) and labels.max() == 0


def test_3d_axes_rejected(starter) -> None:
    with pytest.raises(InvalidArgument, match="2D"):
        starter.predict(np.zeros((3, 32, 32), np.float32), "ZYX", {})


def test_gpu_oom_maps_to_out_of_memory(starter, monkeypatch) -> None:
    import tensorflow as tf

    def boom(batch):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(starter, "_predict_batch", boom)
    with pytest.raises(OutOfMemory, match="out of memory"):
        starter.predict(np.random.default_rng(0).random((64, 64), dtype=np.float32), "YX", {})


@pytest.mark.slow
def test_val_metrics_reproduce_the_manifest(starter, val_samples) -> None:
    """The service path gives the F1@0.5 on dsb2018/val written to the manifest by the training command."""
    pairs = [(s.mask, starter.predict(s.image, "YXC", dict(starter.manifest.defaults))) for s in val_samples]
    f1 = dataset_scores(pairs)["f1"]
    assert f1 == pytest.approx(starter.manifest.metrics["dsb2018_val/f1@0.5"], abs=0.01)
