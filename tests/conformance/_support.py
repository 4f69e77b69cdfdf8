"""Helpers of the conformance suite: start a service folder with ``opsef_protocol.serve``, test images.

A service under test runs as a real process from its own environment, with the
settings the suite checks it honours: ``--device cpu``, ``--threads``,
``--max-message-mb``, ``--max-queue``, its caches redirected with
``--cache-dir``, ``HOME`` pointing to a read-only folder, and the server's
out-of-memory test hook armed above :data:`OOM_PIXELS` pixels.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.envs import ensure_env, env_python
from opsef_orchestrator.paths import repo_root
from opsef_protocol.manifest import ModelRegistry, ServiceSpec, load_service_spec
from opsef_protocol.server import TEST_OOM_ENV

__all__ = [
    "THREADS", "MAX_MESSAGE_MB", "MAX_QUEUE", "OOM_PIXELS", "CORRUPT_MODEL", "ServiceProcess", "start_service",
    "read_only_dir", "blob_image", "many_blobs", "copy_template",
]

#: Settings every service under test is started with (and must report in GetServiceInfo).
THREADS = 2
MAX_MESSAGE_MB = 32
MAX_QUEUE = 1
#: Images above this many pixels fail with out_of_memory (the server's test hook).
OOM_PIXELS = 6_000_000
#: A copy of the service's first project model with a corrupt weight file (FAILED_PRECONDITION).
CORRUPT_MODEL = "conformance_corrupt"
#: Framework cache variables that must not leak from the test process into a service.
_CACHE_VARS = ("KERAS_HOME", "CELLPOSE_LOCAL_MODELS_PATH", "NUMBA_CACHE_DIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME")


@dataclasses.dataclass
class ServiceProcess:
    """A running service: its folder, spec, process, address and a client (one attempt, no retries)."""

    service_dir: Path
    spec: ServiceSpec
    models_dir: Path
    home: Path
    cache_dir: Path
    log: Path
    proc: subprocess.Popen
    address: str
    client: SegmenterClient
    home_read_only: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 30.0) -> int | None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _copy_models(service_dir: Path, spec: ServiceSpec, dest: Path) -> None:
    """The service's models plus a corrupt copy of its first project model with weights."""
    src = service_dir / spec.models_dir
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".*"))
    registry = ModelRegistry(dest)
    for m in registry.manifests():
        if m.source != "published" and registry.weights_present(m.name):
            bad = dest / CORRUPT_MODEL
            shutil.copytree(dest / m.name, bad)
            data = yaml.safe_load((bad / "manifest.yaml").read_text())
            data["name"] = CORRUPT_MODEL
            (bad / "manifest.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
            weight = bad / m.weights[-1].path
            data = bytearray(weight.read_bytes() or b"\0")
            data[-1] ^= 0xFF  # one flipped byte: the sha256 no longer matches
            weight.write_bytes(bytes(data))
            break


def serve_command(service_dir: Path, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """Command and environment that run ``service_dir`` with its own Python."""
    spec = load_service_spec(service_dir)
    python = env_python(ensure_env(service_dir))
    paths = [str(repo_root() / "protos" / "src")] + [str((service_dir / p).resolve()) for p in spec.python_path]
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS and k != TEST_OOM_ENV}
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [str(python), "-m", "opsef_protocol.serve", "--service-dir", str(service_dir), *extra]
    return cmd, env


def start_service(service_dir: Path, work: Path, *, home: Path | None = None, oom_pixels: int = OOM_PIXELS,
                  extra: list[str] | None = None, timeout: float = 300.0, copy_models: bool = True) -> ServiceProcess:
    """Start ``service_dir`` on a free loopback port and wait until it is SERVING."""
    service_dir = Path(service_dir).resolve()
    spec = load_service_spec(service_dir)
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    if copy_models:
        _copy_models(service_dir, spec, models)
    else:
        models = (service_dir / spec.models_dir).resolve()
    home = home or work / "home"
    home.mkdir(exist_ok=True)
    cache, port_file, log = work / "cache", work / "port", work / "service.log"
    args = ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--models-dir", str(models),
            "--cache-dir", str(cache), "--device", "cpu", "--threads", str(THREADS), "--max-concurrent", "1",
            "--max-queue", str(MAX_QUEUE), "--max-message-mb", str(MAX_MESSAGE_MB), "--grace-s", "5", *(extra or [])]
    cmd, env = serve_command(service_dir, args)
    env.update(HOME=str(home), OPSEF_CACHE=str(cache))
    if oom_pixels:
        env[TEST_OOM_ENV] = str(oom_pixels)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=work, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"service {spec.name} did not start (exit {proc.poll()}); log {log}:\n{tail}")
        time.sleep(0.2)
    address = f"127.0.0.1:{int(port_file.read_text())}"
    client = SegmenterClient(address, timeout=300, attempts=1, max_message_bytes=4 * MAX_MESSAGE_MB * 1024 * 1024)
    client.wait_serving(timeout=max(5.0, deadline - time.monotonic()))
    return ServiceProcess(service_dir, spec, models, home, cache, log, proc, address, client)


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[bool]:
    """Make ``path`` read-only for everyone, root included (``mount --bind -o ro``); yields whether it worked.

    The write test inside proves it: as root, permission bits alone block nothing.
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode == 0
    try:
        probe = path / ".write-probe"
        try:
            probe.write_text("x")
            probe.unlink()
            blocked = False
        except OSError:
            blocked = True
        yield blocked
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


# ---------------------------------------------------------------------------- images
def blob_image(shape: tuple[int, ...], spacing: int = 24, radius: float = 6.0, dtype: str = "uint16",
               seed: int = 0) -> np.ndarray:
    """Bright round blobs on a grid (jittered) over a noisy background, any 2D/3D spatial shape.

    Small shapes give a plain noisy image (no room for a blob).
    """
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, shape)
    grids = [np.arange(spacing // 2, s, spacing) if s >= spacing else np.array([], int) for s in shape[-2:]]
    r = int(np.ceil(radius + spacing / 8)) + 1
    yy, xx = np.ogrid[-r: r + 1, -r: r + 1]
    for cy in grids[0]:
        for cx in grids[1]:
            jy, jx = rng.uniform(-spacing / 8, spacing / 8, 2)
            disk = (yy - jy) ** 2 + (xx - jx) ** 2 <= radius ** 2
            y0, x0 = cy - r, cx - r
            ys, xs = slice(max(y0, 0), min(cy + r + 1, shape[-2])), slice(max(x0, 0), min(cx + r + 1, shape[-1]))
            window = disk[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
            img[..., ys, xs][..., window] += 800.0
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        return np.clip(np.rint(img), max(info.min, 0), info.max).astype(dtype)
    return (img / 1000.0).astype(dtype)


def many_blobs(n: int = 70_000, spacing: int = 4, size: int = 3) -> tuple[np.ndarray, int]:
    """A uint8 image of ``n`` separate ``size`` x ``size`` squares on a grid (1-pixel gaps for spacing 4)."""
    side = int(np.ceil(np.sqrt(n)))
    img = np.zeros((side * spacing + 1, side * spacing + 1), np.uint8)
    cells = np.zeros(side * side, bool)
    cells[:n] = True
    cells = cells.reshape(side, side)
    for dy in range(size):
        for dx in range(size):
            img[1 + dy: 1 + dy + side * spacing: spacing, 1 + dx: 1 + dx + side * spacing: spacing][cells] = 200
    return img, n


def copy_template(dest_root: Path, name: str = "mynet") -> Path:
    """Copy ``templates/service`` to ``dest_root/name`` and rename it as docs/new-service.md says.

    Service name, family, package ``opsef_<name>`` and the model manifest's family change; nothing else.
    """
    src = repo_root() / "templates" / "service"
    dest = dest_root / name
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc"))
    (dest / "src" / "opsef_template").rename(dest / "src" / f"opsef_{name}")
    for path in [p for p in dest.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".txt", ".md", "")]:
        if path.name == "Dockerfile" or path.suffix != "":
            text = path.read_text()
            new = (text.replace("opsef_template", f"opsef_{name}").replace("family: template", f"family: {name}")
                   .replace('family = "template"', f'family = "{name}"').replace("name: template", f"name: {name}")
                   .replace("services/template", f"services/{name}").replace("/models/template", f"/models/{name}"))
            if new != text:
                path.write_text(new)
    return dest
