"""Bad input through the command line: one clear line naming the file, key or parameter; no traceback, no partial output."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.io import read_image, write_image

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

STARTER = "stardist:stardist_dsb2018_starter"
CLI = [sys.executable, "-m", "opsef_orchestrator.cli"]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    env.pop("OPSEF_ENDPOINTS", None)
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def _cli_in_process(*args: str) -> tuple[int, str]:
    """The same click commands in this process (no interpreter start-up): exit code and stderr."""
    from click.testing import CliRunner

    from opsef_orchestrator.cli import cli

    result = CliRunner(mix_stderr=False).invoke(cli, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback would have reached the user
    return result.exit_code, result.stderr


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part" in p.name or p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken and hostile image files, one per kind, plus one good image."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    write_image(d / "good.tif", (rng.random((64, 64)) * 255).astype(np.uint8), "YX")
    (d / "zero_bytes.tif").write_bytes(b"")
    good = (d / "good.tif").read_bytes()
    (d / "truncated_half.tif").write_bytes(good[: len(good) // 2])
    (d / "truncated_header.tif").write_bytes(good[:6])
    import imageio.v3 as iio

    iio.imwrite(d / "tmp.png", np.zeros((16, 16), np.uint8))
    (d / "tmp.png").rename(d / "png_renamed.tif")
    (d / "garbage.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    tifffile.imwrite(d / "all_nan.tif", np.full((32, 32), np.nan, np.float32))
    tifffile.imwrite(d / "has_inf.tif", np.where(np.eye(32, dtype=bool), np.inf, 1.0).astype(np.float32))
    tifffile.imwrite(d / "mask_bool.tif", np.zeros((32, 32), bool))
    tifffile.imwrite(d / "complex.tif", np.zeros((32, 32), np.complex64))
    tifffile.imwrite(d / "int64.tif", np.zeros((32, 32), np.int64))
    tifffile.imwrite(d / "one_d.tif", np.zeros((32,), np.uint8))
    tifffile.imwrite(d / "five_d_time.tif", np.zeros((2, 3, 2, 16, 16), np.uint8), imagej=True, metadata={"axes": "TZCYX"})
    tifffile.imwrite(d / "six_d.tif", np.zeros((2, 2, 2, 2, 16, 16), np.uint8))
    tifffile.imwrite(d / "volume_zyx.tif", np.zeros((4, 32, 32), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(d / "six_channels.tif", np.zeros((6, 32, 32), np.uint8), imagej=True, metadata={"axes": "CYX"})
    (d / "notes.txt").write_text("not an image\n")
    return d


BAD_FILES = {
    # file -> a word the error line must contain besides the file name
    "zero_bytes.tif": "empty",
    "truncated_half.tif": "TIFF",
    "truncated_header.tif": "TIFF",
    "png_renamed.tif": "not a TIFF",
    "garbage.tif": "",
    "all_nan.tif": "NaN",
    "has_inf.tif": "infinite",
    "mask_bool.tif": "bool",
    "complex.tif": "complex",
    "int64.tif": "int64",
    "one_d.tif": "axes",
    "five_d_time.tif": "time",
    "six_d.tif": "axes",
    "volume_zyx.tif": "ZYX",
    "six_channels.tif": "channels",
    "notes.txt": "unsupported file type",
}


def test_segment_reports_every_bad_file_and_writes_only_good_ones(corpus: Path, stardist: SegmenterClient,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = [str(corpus / name) for name in ["good.tif", *BAD_FILES]]
    r = _cli("segment", "-m", STARTER, "--endpoint", f"stardist={stardist.target}", "--no-start", "-o", str(out), *files)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(BAD_FILES), r.stderr
    for name, word in BAD_FILES.items():
        line = next((e for e in errors if name in e), None)
        assert line is not None, (name, r.stderr)
        assert word.lower() in line.lower(), (name, line)
    assert sorted(p.name for p in out.iterdir()) == ["good_labels.tif"]
    assert read_image(out / "good_labels.tif").shape == (64, 64)
    assert not _leftovers(out)
    assert stardist.health_status() == "SERVING"


@pytest.mark.parametrize(
    "args,words",
    [
        (["-p", "scale=0"], ["--param", "scale"]),
        (["-p", "n_tiles=[0, 0]"], ["--param", "n_tiles"]),
        (["-p", "prob_threshold=1.5"], ["--param", "prob_threshold"]),
        (["-p", "nms_threshold=-0.2"], ["--param", "nms_threshold"]),
        (["-p", "colour=red"], ["--param", "colour"]),
        (["-p", "prob_threshold"], ["--param", "NAME=VALUE"]),
        (["-m", "stardist:../etc/passwd"], ["stardist:../etc/passwd"]),
        (["-m", "/abs/path:model"], ["/abs/path:model"]),
        (["-m", "nosuchservice:model"], ["nosuchservice"]),
        (["--axes", "QYX"], ["good.tif", "axes"]),
        (["--axes", "ZYX"], ["good.tif", "axes"]),
    ],
    ids=["scale0", "tiles0", "prob-above-1", "nms-negative", "unknown-param", "param-no-value", "model-dotdot",
         "model-absolute", "unknown-service", "axes-unknown-letter", "axes-wrong-count"],
)
def test_segment_bad_options_name_the_option(corpus: Path, stardist: SegmenterClient, tmp_path: Path, args: list[str],
                                             words: list[str]) -> None:
    base = {"-m": STARTER}
    if "-m" in args:
        base = {}
    flat = [x for kv in base.items() for x in kv]
    code, err = _cli_in_process("segment", *flat, *args, "--endpoint", f"stardist={stardist.target}", "--no-start",
                                "-o", str(tmp_path / "o"), str(corpus / "good.tif"))
    assert code != 0
    for w in words:
        assert w in err, (w, err)
    out = tmp_path / "o"
    assert not out.exists() or not any(out.iterdir())


def test_unknown_model_name_is_named(corpus: Path, stardist: SegmenterClient, tmp_path: Path) -> None:
    r = _cli("segment", "-m", "stardist:no_such_model", "--endpoint", f"stardist={stardist.target}", "--no-start",
             "-o", str(tmp_path / "o"), str(corpus / "good.tif"))
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "no_such_model" in r.stderr and "good.tif" in r.stderr
    assert "Traceback" not in r.stderr


def test_lif_series_that_does_not_exist(shared_data: Path, stardist: SegmenterClient, tmp_path: Path) -> None:
    lif = shared_data / "lif" / "testdata_2channel_xz.lif"
    if not lif.is_file():
        pytest.skip(f"{lif} not present")
    for series in ("99", "no such series"):
        r = _cli("segment", "-m", STARTER, "--series", series, "--endpoint", f"stardist={stardist.target}", "--no-start",
                 "-o", str(tmp_path / "o"), str(lif))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert lif.name in r.stderr and "series" in r.stderr and series in r.stderr, r.stderr
    assert not any((tmp_path / "o").iterdir())


def test_inspect_names_the_broken_file(corpus: Path) -> None:
    r = _cli("inspect", str(corpus / "truncated_header.tif"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "truncated_header.tif" in r.stderr, r.stderr
    for name, word in [("zero_bytes.tif", "empty"), ("png_renamed.tif", "TIFF"), ("notes.txt", "unsupported")]:
        code, err = _cli_in_process("inspect", str(corpus / name))
        lines = [x for x in err.splitlines() if x.startswith("Error:")]
        assert code == 1 and len(lines) == 1 and name in lines[0] and word in lines[0], err
    # A TIFF header with nothing behind it: inspect describes it (no series), reading it is refused (see the corpus).
    from click.testing import CliRunner

    from opsef_orchestrator.cli import cli

    res = CliRunner(mix_stderr=False).invoke(cli, ["inspect", str(corpus / "garbage.tif")])
    assert res.exit_code == 0 and "garbage.tif" in res.stdout and "0 series" in res.stdout


def _config(corpus: Path, root: Path, **over) -> dict:
    data = {"name": "bad", "inputs": [{"path": str(corpus / "good.tif")}], "models": [{"model": STARTER}],
            "outputs": {"root": str(root)}}
    data.update(over)
    return data


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

# Few aliases (63), but 9**7 values once expanded, under a key the schema validates (used to take minutes).
NESTED_BOMB = "name: t\ninputs: [{path: /tmp}]\nmodels:\n  - model: stardist:s\n    grid:\n      scale: [&a0 [1, 1, 1]" + "".join(
    f", &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)) + "]\n"

HOSTILE_CONFIGS = {
    "unknown-key": (lambda d: d.update(colour="red"), "colour"),
    "typo-in-nested-key": (lambda d: d["outputs"].update(rot="x"), "outputs.rot"),
    "wrong-type": (lambda d: d.update(name=["a", "list"]), "name"),
    "wrong-type-inputs": (lambda d: d.update(inputs="not-a-list"), "inputs"),
    "model-dotdot": (lambda d: d["models"][0].update(model="stardist:../../etc"), "models.0.model"),
    "model-absolute": (lambda d: d["models"][0].update(model="/etc/passwd"), "models.0.model"),
    "scale-zero": (lambda d: d["models"][0].update(grid={"scale": [0]}), "scale"),
    "threshold-above-1": (lambda d: d["models"][0].update(parameters={"prob_threshold": 2}), "prob_threshold"),
    "threshold-below-0": (lambda d: d["models"][0].update(grid={"nms_threshold": [0.3, -1]}), "nms_threshold"),
    "tiles-zero": (lambda d: d["models"][0].update(parameters={"n_tiles": [0, 0]}), "n_tiles"),
    "tile-size-zero": (lambda d: d.update(tiling={"tile_size": 0}), "tiling.tile_size"),
    "overlap-contradicts-tile": (lambda d: d.update(tiling={"tile_size": 256, "overlap": 200}), "overlap"),
    "in-flight-zero": (lambda d: d.update(execution={"max_in_flight": 0}), "execution.max_in_flight"),
    "missing-input": (lambda d: d.update(inputs=[{"path": "/no/such/folder"}]), "inputs[0].path /no/such/folder"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_run_bad_configuration_names_the_key(corpus: Path, tmp_path: Path, case: str) -> None:
    mutate, key = HOSTILE_CONFIGS[case]
    data = _config(corpus, tmp_path / "runs")
    mutate(data)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    code, err = _cli_in_process("run", str(p), "--dry-run")
    assert code != 0 and key in err, (key, err)
    assert "run.yaml" in err or case == "missing-input", err  # schema errors name the file, plan errors the key
    assert not (tmp_path / "runs").exists()


def test_run_bad_configuration_in_a_fresh_process(corpus: Path, tmp_path: Path) -> None:
    data = _config(corpus, tmp_path / "runs", colour="red")
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    r = _cli("run", str(p))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "colour" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "text,word",
    [
        (BOMB, "alias"),
        (NESTED_BOMB, "alias"),
        ("name: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
        ("name: !!python/object/apply:os.system ['touch PWNED']\n", "python/object"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- a\n- list\n", "mapping"),
        ("", "mapping"),
    ],
    ids=["anchor-bomb", "anchor-bomb-under-valid-key", "deep-nesting", "python-tag", "broken-yaml", "top-level-list", "empty-file"],
)
def test_run_hostile_yaml_is_refused(tmp_path: Path, text: str, word: str) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    code, err = _cli_in_process("run", str(p), "--dry-run")
    assert code != 0 and word in err and "run.yaml" in err, err
    assert not Path("PWNED").exists()


def test_run_with_missing_lif_series_fails_the_job_not_the_run(shared_data: Path, stardist: SegmenterClient,
                                                               tmp_path: Path) -> None:
    lif = shared_data / "lif" / "testdata_2channel_xz.lif"
    if not lif.is_file():
        pytest.skip(f"{lif} not present")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(lif, src / lif.name)
    data = {"name": "lif", "inputs": [{"path": str(src), "read": {"series": 42}}], "models": [{"model": STARTER}],
            "outputs": {"root": str(tmp_path / "runs"), "report": False},
            "endpoints": {"stardist": stardist.target}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    r = _cli("run", str(p))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    failed = [x for x in r.stderr.splitlines() if x.startswith("FAILED")]
    assert len(failed) == 1 and lif.name in failed[0] and "series" in failed[0] and "42" in failed[0], r.stderr
    assert not _leftovers(tmp_path / "runs")
