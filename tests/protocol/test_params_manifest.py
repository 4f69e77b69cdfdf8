"""Parameter validation and manifests: names, ranges, strictness, sha256 checks, path safety."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opsef_protocol.errors import InvalidArgument, ModelNotFound, WeightsUnavailable
from opsef_protocol.manifest import ManifestError, ModelRegistry, load_manifest, sha256_file, verify_weights
from opsef_protocol.params import PARAMETER_NAMES, params_from_proto, params_to_proto, validate_params


def test_params_round_trip_through_proto() -> None:
    p = {"scale": 0.5, "prob_threshold": 0.25, "channels": [0, 0], "n_tiles": [2, 3], "normalize": False, "min_size": 10}
    assert params_from_proto(params_to_proto(p)) == p


def test_unset_params_stay_unset() -> None:
    assert params_from_proto(params_to_proto({})) == {}


@pytest.mark.parametrize(
    "params,name",
    [
        ({"scale": 0}, "scale"),
        ({"scale": -1}, "scale"),
        ({"prob_threshold": 1.5}, "prob_threshold"),
        ({"nms_threshold": -0.1}, "nms_threshold"),
        ({"n_tiles": [0, 1]}, "n_tiles"),
        ({"n_tiles": [1.5]}, "n_tiles"),
        ({"channels": [5, 0]}, "channels"),
        ({"min_size": 2.5}, "min_size"),
        ({"normalize": 1}, "normalize"),
        ({"diameter": float("nan")}, "diameter"),
        ({"norm_percentile_low": 99, "norm_percentile_high": 1}, "norm_percentile_low"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_params_name_the_parameter(params: dict, name: str) -> None:
    with pytest.raises(InvalidArgument, match=name):
        validate_params(params)


def test_parameter_names_cover_the_proto() -> None:
    assert {"scale", "diameter", "prob_threshold", "nms_threshold", "flow_threshold", "cellprob_threshold",
            "channels", "n_tiles", "anisotropy", "do_3d", "stitch_threshold"} <= set(PARAMETER_NAMES)


def _model(tmp: Path, name: str = "m1", **over) -> Path:
    folder = tmp / name
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"weights")
    data = {"name": name, "version": "1", "family": "stardist", "framework": "tensorflow", "source": "project",
            "dims": [2], "axes": ["YX"], "weights": [{"path": "w.bin", "sha256": sha256_file(folder / "w.bin")}]}
    data.update(over)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_manifest_rejects_unknown_keys_naming_them(tmp_path: Path) -> None:
    folder = _model(tmp_path, colour="blue")
    with pytest.raises(ManifestError, match="colour"):
        load_manifest(folder)


def test_manifest_name_must_match_folder(tmp_path: Path) -> None:
    folder = _model(tmp_path, "m1")
    folder.rename(tmp_path / "other")
    with pytest.raises(ManifestError, match="differs from its folder"):
        load_manifest(tmp_path / "other")


def test_manifest_rejects_bad_default_and_weight_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="prob_threshold"):
        load_manifest(_model(tmp_path / "a", defaults={"prob_threshold": 2}))
    with pytest.raises(ManifestError, match="inside the model folder"):
        load_manifest(_model(tmp_path / "b", weights=[{"path": "../x", "sha256": "0" * 64}]))


def test_registry_lists_and_refuses_paths(tmp_path: Path) -> None:
    _model(tmp_path, "good")
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "manifest.yaml").write_text("name: [unclosed")
    reg = ModelRegistry(tmp_path, family="stardist")
    assert reg.names == ["good"]
    assert "broken" in reg.problems
    for name in ("../good", "/etc/passwd", "good/..", ".hidden"):
        with pytest.raises(InvalidArgument):
            reg.get(name)
    with pytest.raises(ModelNotFound, match="known models: good"):
        reg.get("nope")


def test_weights_verified_before_loading(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    m = load_manifest(folder)
    verify_weights(m, folder)
    (folder / "w.bin").write_bytes(b"tampered")
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        verify_weights(m, folder)
    (folder / "w.bin").unlink()
    with pytest.raises(WeightsUnavailable, match="missing"):
        verify_weights(m, folder)


def test_shipped_manifests_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "services"
    folders = [p.parent for p in root.glob("*/models/*/manifest.yaml")]
    assert folders, "no shipped models"
    for folder in folders:
        load_manifest(folder)
