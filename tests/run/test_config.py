"""Run configuration: validation names the key, overrides, alias bombs, dry-run plan counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsef_orchestrator.config import TEMPLATE, ConfigError, apply_overrides, config_reference, load_config
from opsef_orchestrator.engine import make_plan


def _write(tmp: Path, data: dict | str) -> Path:
    p = tmp / "run.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _base(tmp: Path) -> dict:
    img = tmp / "imgs"
    img.mkdir(exist_ok=True)
    for name in ("a.tif", "b.tif", "c.png"):
        (img / name).write_bytes(b"x")
    return {"name": "t", "inputs": [{"path": str(img), "include": ["*.tif"]}],
            "pipelines": [{"name": "none", "steps": []}, {"name": "m3", "steps": [{"op": "median", "size": 3}]}],
            "models": [{"model": "stardist:s", "grid": {"prob_threshold": [0.3, 0.5, 0.7]}},
                       {"model": "cellpose:c", "grid": {"scale": [0.5, 1.0]}}]}


def test_plan_counts(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _base(tmp_path)))
    plan = make_plan(cfg)
    assert len(plan.images) == 2 and plan.n_jobs == 2 * 2 * (3 + 2) == 20
    assert plan.services == ["cellpose", "stardist"]
    assert "2 images x 2 pipelines x 5 model/parameter sets = 20 jobs" in plan.describe(cfg)


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["models"][0].update(grid={"prob_threshold": [1.5]}), "prob_threshold"),
        (lambda d: d["models"][0].update(model="nocolon"), "models.0.model"),
        (lambda d: d["pipelines"][1]["steps"][0].update(size=-3), "pipelines.1"),
        (lambda d: d["pipelines"].append({"name": "none", "steps": []}), "unique"),
        (lambda d: d.update(tiling={"tile_size": 256, "overlap": 200}), "overlap"),
        (lambda d: d["inputs"][0].update(path=123, inclde=["x"]), "inclde"),
        (lambda d: d.update(execution={"max_in_flight": 0}), "execution.max_in_flight"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, mutate, key: str) -> None:
    data = _base(tmp_path)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert key in str(info.value) and "run.yaml" in str(info.value)


def test_alias_bomb_and_non_mapping_refused(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    with pytest.raises(ConfigError, match="alias"):
        load_config(_write(tmp_path, bomb))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path, _base(tmp_path))
    cfg = load_config(p, ["models.1.grid.scale=[0.2, 0.4, 0.6]", "name=other", "tiling.tile_size=512"])
    assert cfg.name == "other" and cfg.models[1].grid["scale"] == [0.2, 0.4, 0.6] and cfg.tiling.tile_size == 512
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"models": []}, ["models.3.model=x"])


def test_template_is_valid_and_reference_covers_every_key(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, TEMPLATE))
    assert {m.model.split(":")[0] for m in cfg.models} == {"stardist", "cellpose", "unet"}
    ref = config_reference()
    for key in ("inputs[].include", "models[].grid", "tiling.overlap", "outputs.csv_dialect", "execution.max_in_flight", "median"):
        assert key in ref


def test_cli_dry_run_and_bad_config_exit_cleanly(tmp_path: Path) -> None:
    p = _write(tmp_path, _base(tmp_path))
    cli = [sys.executable, "-m", "opsef_orchestrator.cli"]
    r = subprocess.run(cli + ["run", str(p), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0 and "= 20 jobs" in r.stdout
    bad = _base(tmp_path)
    bad["unknown_key"] = 1
    r = subprocess.run(cli + ["run", str(_write(tmp_path, bad)), "--dry-run"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown_key" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cli + ["init", str(tmp_path / "tpl.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "tpl.yaml").read_text() == TEMPLATE
