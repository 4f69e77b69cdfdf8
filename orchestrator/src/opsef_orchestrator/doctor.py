"""``opsef-orchestrate doctor``: check the installation and explain every problem with the command that fixes it.

Checks, per service folder:

- its environment is built for the current pins and the installed versions equal them;
- it is reachable and SERVING (explicit endpoints must be; a stopped local service
  is only a warning, since runs start it on demand, unless ``require_running``);
- every project/user model's weight files are present with the manifest's sha256,
  every manifest validates, and published models' caches are present (when the
  running service can tell);
- the GPUs each framework sees, against the NVIDIA GPUs of the host;
- the service's message-size limit against the largest tile the orchestrator sends;

and free disk for the cache and the outputs. Nothing here imports a framework:
GPU checks run the service's own Python.

Examples
--------
>>> c = Check("disk", "cache", "fail", "2 GiB free", "free space")
>>> format_report([c]).splitlines()[0]
'[FAIL] disk      cache: 2 GiB free'
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Literal

from opsef_protocol.errors import WeightsUnavailable
from opsef_protocol.manifest import ManifestError, ModelRegistry, load_service_spec, verify_weights

from opsef_orchestrator.envs import env_dir, env_python, env_ready
from opsef_orchestrator.paths import cache_dir, services_root

__all__ = ["Check", "Status", "run_checks", "check_environment", "check_weights", "check_service", "check_gpus",
           "check_message_limit", "check_disk", "parse_pins", "format_report", "exit_code"]

logger = logging.getLogger(__name__)

Status = Literal["ok", "info", "warn", "fail"]
_MARK = {"ok": "[ OK ]", "info": "[INFO]", "warn": "[WARN]", "fail": "[FAIL]"}
_GIB = 1024 ** 3
_VERSIONS_SNIPPET = (
    "import json, importlib.metadata as m\n"
    "print(json.dumps({(d.metadata['Name'] or '').lower(): d.version for d in m.distributions()}))\n"
)
_DEVICES_SNIPPET = (
    "import importlib, json, sys, logging\n"
    "logging.disable(logging.CRITICAL)\n"
    "from opsef_protocol.adapter import RuntimeOptions\n"
    "mod, cls = sys.argv[1].split(':')\n"
    "info = getattr(importlib.import_module(mod), cls).runtime_info(RuntimeOptions(device='auto'))\n"
    "print('OPSEF-DEVICES ' + json.dumps({'framework': info.framework, 'version': info.framework_version,\n"
    "                                     'device': info.device, 'devices': list(info.devices_available)}))\n"
)


@dataclasses.dataclass(frozen=True)
class Check:
    """One finding: what was checked, its status, what was found and the command that fixes it."""

    area: str
    subject: str
    status: Status
    message: str
    fix: str = ""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of a requirements file (extras and markers dropped).

    Examples
    --------
    >>> parse_pins("# c\\nnumpy==1.26.4\\ntensorflow[and-cuda]==2.15.1 ; python_version>'3'\\nfoo>=1")
    {'numpy': '1.26.4', 'tensorflow': '2.15.1'}
    """
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s,]+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(3)
    return pins


def _fix_install(name: str) -> str:
    return f"opsef-orchestrate services install --services {name}"


def check_environment(service_dir: Path, timeout: float = 120.0) -> list[Check]:
    """The service's environment exists for its current pins, and what is installed equals the pins."""
    spec = load_service_spec(service_dir)
    env = env_dir(service_dir, spec)
    if not env_ready(service_dir):
        old = sorted(p.name for p in env.parent.glob(f"{spec.name}-*") if p.is_dir() and p != env) if env.parent.is_dir() else []
        why = f" (environments for other pins exist: {', '.join(old)})" if old else ""
        return [Check("env", spec.name, "fail", f"environment for the current pins is not built: {env}{why}", _fix_install(spec.name))]
    try:
        r = subprocess.run([str(env_python(env)), "-c", _VERSIONS_SNIPPET], capture_output=True, text=True, timeout=timeout)
        installed = {_norm(k): v for k, v in json.loads(r.stdout).items()}
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return [Check("env", spec.name, "fail", f"environment {env} is broken ({type(exc).__name__}: {exc})",
                      f"rm -rf {env} && {_fix_install(spec.name)}")]
    pins = parse_pins((service_dir / spec.requirements).read_text())
    def matches(have: str | None, pinned: str) -> bool:  # PEP 440: '==2.1' accepts '2.1+cpu' (a local version label)
        return have is not None and (have == pinned or ("+" not in pinned and have.split("+", 1)[0] == pinned))

    wrong = [f"{n} {installed.get(n, 'missing')} (pinned {v})" for n, v in sorted(pins.items()) if not matches(installed.get(n), v)]
    if wrong:
        return [Check("env", spec.name, "fail", f"installed packages differ from the pins: {'; '.join(wrong)}",
                      f"rm -rf {env} && {_fix_install(spec.name)}")]
    return [Check("env", spec.name, "ok", f"{len(pins)} pins installed in {env}")]


def check_weights(service_dir: Path, listed: dict[str, Any] | None = None) -> list[Check]:
    """Manifests validate; project/user weights present with their sha256; published caches (if the service says)."""
    spec = load_service_spec(service_dir)
    registry = ModelRegistry(service_dir / spec.models_dir)
    out = [Check("weights", f"{spec.name}/{name}", "fail", f"manifest does not validate: {problem}",
                 f"fix or remove {registry.root / name}") for name, problem in sorted(registry.problems.items())]
    for m in registry.manifests():
        subject = f"{spec.name}/{m.name}"
        if m.source == "published":
            info = (listed or {}).get(m.name)
            if info is None:
                out.append(Check("weights", subject, "info", "published model; its cache is checked when the service is running",
                                 f"opsef-orchestrate services up --services {spec.name}"))
            elif info.weights_present:
                out.append(Check("weights", subject, "ok", f"published model cached in {info.weights_location}"))
            else:
                out.append(Check("weights", subject, "warn", f"published model not cached in {info.weights_location} "
                                 "(offline it fails with FAILED_PRECONDITION)",
                                 f"copy the framework's cached model to {info.weights_location} (see services/{spec.name}/README.md)"))
            continue
        try:
            verify_weights(m, registry.root / m.name)
        except WeightsUnavailable as exc:
            command = m.training.get("command") if isinstance(m.training, dict) else None
            fix = (f"restore {registry.root / m.name} from the repository (git checkout -- {registry.root / m.name})"
                   + (f", or retrain: {command}" if command else ""))
            out.append(Check("weights", subject, "fail", str(exc), fix))
        else:
            out.append(Check("weights", subject, "ok", f"{len(m.weights)} weight file(s), sha256 as in the manifest"))
    return out


def check_service(name: str, endpoint: str | None, explicit: bool, require_running: bool,
                  timeout: float = 5.0) -> tuple[list[Check], Any, dict[str, Any]]:
    """Reachable and SERVING; returns the checks, its ServiceInfo (or None) and its models by name."""
    import grpc

    from opsef_orchestrator.client import SegmenterClient

    up = f"opsef-orchestrate services up --services {name}"
    if endpoint is None:
        status: Status = "fail" if require_running else "warn"
        return [Check("service", name, status, "not running (a run starts it on demand)", up)], None, {}
    fix = f"check the service at {endpoint} (OPSEF_ENDPOINTS)" if explicit else f"opsef-orchestrate services down --services {name} && {up}"
    try:
        with SegmenterClient(endpoint) as client:
            health = client.health_status(timeout=timeout)
            info = client.info(timeout=timeout)
            models = {m.name: m for m in client.models(timeout=timeout)}
    except grpc.RpcError as exc:
        return [Check("service", name, "fail", f"{endpoint} unreachable: {exc.code().name}", fix)], None, {}
    if health != "SERVING":
        return [Check("service", name, "fail", f"{endpoint} is {health}", fix)], info, models
    return ([Check("service", name, "ok", f"SERVING at {endpoint} ({info.framework} {info.framework_version}, "
                   f"device {info.device}, {len(models)} models)")], info, models)


def _host_gpus() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.startswith("GPU ")]


def check_gpus(service_dir: Path, info: Any, host_gpus: list[str], timeout: float = 180.0) -> list[Check]:
    """GPUs the service's framework sees (from the running service, else from its environment's Python)."""
    from opsef_orchestrator.paths import repo_root

    spec = load_service_spec(service_dir)
    if info is not None:
        devices, device, framework = list(info.devices_available), info.device, info.framework
    elif env_ready(service_dir):
        paths = [str(repo_root() / "protos" / "src")] + [str((service_dir / p).resolve()) for p in spec.python_path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "3", **spec.env}
        stderr = ""
        try:
            r = subprocess.run([str(env_python(env_dir(service_dir, spec))), "-c", _DEVICES_SNIPPET, spec.adapter],
                               capture_output=True, text=True, timeout=timeout, env=env, cwd=service_dir)
            stderr = r.stderr.strip().splitlines()[-1:] and r.stderr.strip().splitlines()[-1]
            line = next(x for x in r.stdout.splitlines() if x.startswith("OPSEF-DEVICES "))
            found = json.loads(line.split(" ", 1)[1])
        except (OSError, StopIteration, ValueError, subprocess.SubprocessError) as exc:
            return [Check("gpu", spec.name, "fail", f"{spec.framework} could not be initialised ({type(exc).__name__}) {stderr}".strip(),
                          f"rm -rf {env_dir(service_dir, spec)} && {_fix_install(spec.name)}")]
        devices, device, framework = found["devices"], found["device"], found["framework"]
    else:
        return [Check("gpu", spec.name, "info", "environment not built; GPU check skipped", _fix_install(spec.name))]
    gpus = [d for d in devices if d != "cpu"]
    if gpus:
        return [Check("gpu", spec.name, "ok", f"{framework} sees {', '.join(gpus)} (default device {device})")]
    if host_gpus:
        return [Check("gpu", spec.name, "warn", f"the host has {len(host_gpus)} NVIDIA GPU(s) but {framework} sees none: "
                      "CPU inference only (CPU-only wheel pinned, or driver/CUDA mismatch)",
                      f"use the GPU image: docker build -f services/{spec.name}/Dockerfile . (see its header), "
                      f"or run the service where the framework sees the GPU and set OPSEF_ENDPOINTS")]
    return [Check("gpu", spec.name, "ok", f"{framework}: CPU only (no NVIDIA GPU on this host)")]


def check_message_limit(name: str, info: Any, tile_size: int, channels: int = 3) -> list[Check]:
    """The largest tile the orchestrator sends (float32, ``channels``) fits the service's message limit."""
    from opsef_protocol.server import DEFAULT_MAX_MESSAGE_BYTES

    if info is None:
        return []
    need = tile_size * tile_size * 4 * channels + 1024 * 1024
    limit = int(info.max_message_bytes)
    if limit < need:
        mb = -(-need // (1024 * 1024))
        side = int((limit - 1024 * 1024) / (4 * channels)) ** 0.5
        return [Check("limits", name, "fail",
                      f"message limit {limit / 2**20:.0f} MiB is below a {tile_size}x{tile_size} float32 x{channels} tile ({need / 2**20:.0f} MiB)",
                      f"start the service with --max-message-mb {mb}, or set tiling.tile_size to {int(side) // 64 * 64} or less")]
    note = "" if limit <= DEFAULT_MAX_MESSAGE_BYTES else f" (above the client's default {DEFAULT_MAX_MESSAGE_BYTES // 2**20} MiB)"
    return [Check("limits", name, "ok", f"message limit {limit / 2**20:.0f} MiB fits {tile_size}x{tile_size} tiles{note}")]


def check_disk(label: str, path: Path, min_free_gb: float) -> list[Check]:
    """Free space on the disk that holds ``path`` (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free / _GIB
    msg = f"{free:.1f} GiB free at {p}"
    if free < min_free_gb:
        return [Check("disk", label, "fail", f"{msg} (< {min_free_gb:g} GiB)",
                      f"free space on {p}, or move it: set OPSEF_CACHE / outputs.root to a larger disk")]
    if free < 4 * min_free_gb:
        return [Check("disk", label, "warn", f"{msg} (low)", f"free space on {p}")]
    return [Check("disk", label, "ok", msg)]


def run_checks(
    *,
    services: Iterable[str] | None = None,
    services_dir: Path | None = None,
    manager: Any = None,
    outputs: Path = Path("runs"),
    tile_size: int = 2048,
    require_running: bool = False,
    check_envs: bool = True,
    gpu_check: bool = True,
    min_free_gb: float = 2.0,
) -> list[Check]:
    """Every check, in order: environments, services, weights, GPUs, message limits, disk."""
    from opsef_orchestrator.manager import ServiceManager, available_services

    root = Path(services_dir or services_root()).resolve()
    manager = manager or ServiceManager(services_dir=root)
    names = list(services) if services else available_services(root)
    eps = manager.endpoints()
    host_gpus = _host_gpus() if gpu_check else []
    checks: list[Check] = []
    for name in names:
        sdir = root / name
        if not (sdir / "service.yaml").is_file():
            checks.append(Check("service", name, "fail", f"no service folder {sdir}", f"ls {root}"))
            continue
        try:
            load_service_spec(sdir)
        except ManifestError as exc:
            checks.append(Check("service", name, "fail", str(exc), f"fix {sdir / 'service.yaml'}"))
            continue
        if check_envs:
            checks += check_environment(sdir)
        found, info, models = check_service(name, eps.get(name), name in manager.explicit, require_running)
        checks += found
        checks += check_weights(sdir, models if info is not None else None)
        if gpu_check:
            checks += check_gpus(sdir, info, host_gpus)
        checks += check_message_limit(name, info, tile_size)
    checks += check_disk("cache", cache_dir(), min_free_gb)
    checks += check_disk("outputs", Path(outputs), min_free_gb)
    return checks


def format_report(checks: list[Check]) -> str:
    """One line per check, the fix under each problem, and a summary line."""
    lines = []
    for c in checks:
        lines.append(f"{_MARK[c.status]} {c.area:<9} {c.subject}: {c.message}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"       fix: {c.fix}")
    n_fail = sum(c.status == "fail" for c in checks)
    n_warn = sum(c.status == "warn" for c in checks)
    if len(checks) > 1:
        lines.append(f"{len(checks)} checks: {n_fail} problem(s), {n_warn} warning(s)")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    """1 when anything failed, else 0 (warnings do not fail)."""
    return int(any(c.status == "fail" for c in checks))
