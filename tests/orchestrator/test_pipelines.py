"""Pipelines: validation with exact keys, application per plane / volume / channel, registry, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from opsef_orchestrator.cli import cli
from opsef_orchestrator.io import read_image
from opsef_orchestrator.pipelines import (
    PIPELINE_OPERATIONS,
    Pipeline,
    PipelineStep,
    PreprocessConfig,
    apply_filter,
    operations_reference,
    parse_step,
)
from tests.utils import blob_image


def _locs(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.errors()]


@pytest.mark.parametrize("steps, loc", [
    ([{"op": "gaussian", "sigmaa": 2}], "steps.0.gaussian.sigmaa"),
    ([{"op": "median"}, {"op": "median", "size": 4}], "steps.1.median.size"),
    ([{"op": "clahe", "clip_limit": 2}], "steps.0.clahe.clip_limit"),
    ([{"op": "normalize", "low": 90, "high": 10}], "steps.0.normalize"),
    ([{"op": "to_dtype", "dtype": "int8"}], "steps.0.to_dtype.dtype"),
    ([{"op": "median", "mode": "cube"}], "steps.0.median.mode"),
    ([{"op": "sharpen"}], "steps.0"),
    ([{"size": 3}], "steps.0"),
])
def test_validation_names_the_exact_key(steps, loc):
    with pytest.raises(ValidationError) as info:
        Pipeline(name="p", steps=steps)
    assert loc in _locs(info.value)


def test_unknown_pipeline_key_and_bad_name():
    with pytest.raises(ValidationError) as info:
        Pipeline.model_validate({"name": "p", "stepz": []})
    assert "stepz" in _locs(info.value)
    with pytest.raises(ValidationError) as info:
        Pipeline(name="a/b")
    assert "name" in _locs(info.value)


def test_unknown_op_error_lists_the_known_ones():
    with pytest.raises(ValidationError, match="'median'"):
        PipelineStep.of("sharpen")


def test_every_op_is_in_the_registry_with_a_schema():
    assert {"none", "median", "mean", "gaussian", "subtract_constant", "rolling_ball", "white_tophat", "clahe",
            "sobel", "roberts", "invert", "normalize", "to_dtype", "rescale", "bin", "select_z", "project",
            "select_channels", "rgb_to_grey", "color_deconvolution"} <= set(PIPELINE_OPERATIONS)
    for name, op in PIPELINE_OPERATIONS.items():
        schema = op.parameters_schema()
        assert schema["additionalProperties"] is False and "op" not in schema["properties"]
        assert op.description and callable(op.function)
        assert f"| {name} |" in operations_reference()


def test_python_and_config_pipelines_agree():
    img = blob_image((3, 32, 32), radius=1.5)
    from_cfg = Pipeline.model_validate(yaml.safe_load("""
name: mg
steps:
  - {op: median, size: 3}
  - {op: gaussian, sigma: 1.0}
"""))
    from_py = Pipeline.from_steps("mg", ("median", {"size": 3}), ("gaussian", {"sigma": 1.0}))
    a, ax = from_cfg.apply(img, "ZYX")
    b, _ = from_py.apply(img, "ZYX")
    np.testing.assert_array_equal(a, b)
    assert ax == "ZYX" and a.dtype == img.dtype
    assert from_cfg.model_dump() == from_py.model_dump()


def test_plane_and_volume_modes_differ_and_are_per_channel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (4, 16, 16, 2)).astype(np.uint8)
    plane, _ = apply_filter("median", img, "ZYXC", mode="plane", size=3)
    vol, _ = apply_filter("median", img, "ZYXC", mode="volume", size=3)
    from opsef_orchestrator.preprocess import median

    np.testing.assert_array_equal(plane[2, :, :, 1], median(img[2, :, :, 1], 3))
    np.testing.assert_array_equal(vol[..., 0], median(img[..., 0], 3))
    assert not np.array_equal(plane, vol)
    with pytest.raises(ValueError, match="roberts works on 2D planes only"):
        apply_filter("roberts", img, "ZYXC", mode="volume")
    # normalisation defaults to the whole volume per channel
    norm, _ = apply_filter("normalize", img.astype(np.float32) * [1, 10], "ZYXC", low=0, high=100)
    assert norm[..., 0].max() == 1 and norm[..., 1].max() == 1 and norm[0, ..., 0].max() <= 1


def test_reshape_steps_change_axes():
    rgb = np.random.default_rng(0).integers(0, 255, (2, 3, 20, 24, 3)).astype(np.uint8)   # TZYXC
    p = Pipeline(name="proj", steps=[{"op": "select_z", "start": 0, "step": 2}, {"op": "project", "method": "sum"},
                                     {"op": "rgb_to_grey"}, {"op": "bin", "factor": 2},
                                     {"op": "to_dtype", "dtype": "uint8"}])
    out, ax = p.apply(rgb, "TZYXC")
    assert ax == "TYX" and out.shape == (2, 10, 12) and out.dtype == np.uint8


def test_step_errors_name_the_step():
    p = Pipeline(name="bad", steps=[{"op": "median"}, {"op": "project"}])
    with pytest.raises(ValueError, match=r"pipeline 'bad' step 1 \(project\): z_project: image has no Z axis"):
        p.apply(np.zeros((8, 8), np.uint8), "YX")


def test_parse_step():
    s = parse_step("rolling_ball:radius=20,shrink=2")
    assert s.op == "rolling_ball" and s.params() == {"radius": 20.0, "shrink": 2}
    assert parse_step("sobel").op == "sobel"
    assert parse_step("to_dtype:in_range=[0, 4095],dtype=uint16").params()["in_range"] == (0.0, 4095.0)
    with pytest.raises(ValueError, match="key=value"):
        parse_step("median:3")
    with pytest.raises(ValidationError):
        parse_step("median:sise=3")


def test_apply_image_keeps_metadata(tmp_path):
    f = tmp_path / "a.tif"
    tifffile.imwrite(f, blob_image((3, 16, 16), radius=1.0), imagej=True, resolution=(2, 2),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 3.0})
    img = read_image(f)
    out = Pipeline(name="g", steps=[{"op": "project", "method": "max"}]).apply_image(img)
    assert out.axes == "YX" and out.pixel_size == img.pixel_size and out.metadata["pipeline"] == "g"


def test_preprocess_config_validation():
    with pytest.raises(ValidationError) as info:
        PreprocessConfig.model_validate({"input": "a", "output": "b", "pipelines": [], "extra": 1})
    assert {"pipelines", "extra"} <= set(_locs(info.value))
    with pytest.raises(ValidationError, match="unique"):
        PreprocessConfig.model_validate({"input": "a", "output": "b",
                                         "pipelines": [{"name": "x"}, {"name": "x"}]})
    with pytest.raises(ValidationError) as info:
        PreprocessConfig.model_validate({"input": "a", "output": "b", "pipelines": [{"name": "x"}],
                                         "read": {"chanel": 1}})
    assert "read.chanel" in _locs(info.value)


# ------------------------------------------------------------------ CLI


def test_cli_inspect(shared_data: Path):
    r = CliRunner().invoke(cli, ["inspect", str(shared_data / "lif" / "testdata_2channel_xz.lif")])
    assert r.exit_code == 0, r.output
    assert "series 0 'xzt': axes TYXC shape (20, 128, 128, 2) uint8" in r.output
    r = CliRunner().invoke(cli, ["inspect", "--json", str(shared_data / "fluo3d" / "cho_t00_img.tif")])
    assert r.exit_code == 0 and '"axes": "ZYX"' in r.output


def test_cli_inspect_bad_file(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"nope" * 20)
    r = CliRunner().invoke(cli, ["inspect", str(bad)])
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {bad}: cannot read TIFF") and "Traceback" not in r.output


def test_cli_preprocess_config(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"img_{i}.tif", blob_image((3, 20, 20), radius=1.0, seed=i), imagej=True,
                         metadata={"axes": "ZYX"})
    tifffile.imwrite(src / "skip_me.tif", np.zeros((4, 4), np.uint8))
    cfg = {"input": str(src), "output": str(tmp_path / "out"), "exclude": ["skip_*"],
           "read": {"z": [0, 3, 2]},
           "pipelines": [{"name": "raw"},
                         {"name": "mc", "steps": [{"op": "median", "size": 3}, {"op": "clahe"},
                                                  {"op": "to_dtype", "dtype": "uint8"}]}]}
    cfg_file = tmp_path / "pre.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["preprocess", str(cfg_file)])
    assert r.exit_code == 0, r.output
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.tif"))
    assert outs == ["mc/img_0.tif", "mc/img_1.tif", "raw/img_0.tif", "raw/img_1.tif"]
    img = read_image(tmp_path / "out" / "mc" / "img_1.tif")
    assert img.axes == "ZYX" and img.shape == (2, 20, 20) and img.dtype == np.uint8


def test_cli_preprocess_flags_and_errors(tmp_path, shared_data: Path):
    lif = shared_data / "lif" / "testdata_2channel_xz.lif"
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["preprocess", "-i", str(lif), "-o", str(out), "--series", "xzt",
                                 "--channel", "1", "--time", "8", "-s", "none", "--name", "ref"])
    assert r.exit_code == 0, r.output
    got = read_image(out / "ref" / "testdata_2channel_xz_xzt.tif").data
    np.testing.assert_array_equal(got, tifffile.imread(shared_data / "lif" / "xz_c1_t8.tif"))
    r = CliRunner().invoke(cli, ["preprocess", "-i", str(lif), "-o", str(out), "-s", "gaussian:sigmaa=2"])
    assert r.exit_code == 1 and "gaussian.sigmaa: Extra inputs are not permitted" in r.output
    r = CliRunner().invoke(cli, ["preprocess", "-i", str(lif), "-o", str(out), "--series", "9", "-s", "none"])
    assert r.exit_code == 1 and f"{lif}: series 9 does not exist" in r.output
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("input: x\noutput: y\npipelines:\n  - name: a\n    steps: [{op: median, size: 4}]\n")
    r = CliRunner().invoke(cli, ["preprocess", str(bad_cfg)])
    assert r.exit_code == 1 and "pipelines.0.steps.0.median.size" in r.output
    r = CliRunner().invoke(cli, ["preprocess", "--list-ops"])
    assert r.exit_code == 0 and "| clahe |" in r.output
