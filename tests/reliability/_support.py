"""Helpers of the reliability suite (imported by its conftest and tests)."""
from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from opsef_orchestrator.client import SegmenterClient
from opsef_orchestrator.envs import env_python, env_ready, ensure_env
from opsef_orchestrator.paths import cache_dir, repo_root

__all__ = ["STARTERS", "Served", "service_skip_reason", "service_client", "start_serve", "copy_model", "make_certs",
           "fill_disk", "mounted"]

#: Starter model of each service (the bad-input corpus and the load test run against these).
STARTERS = {"stardist": "stardist_dsb2018_starter", "unet": "unet_dsb2018_starter", "cellpose": "cellpose_dsb2018_starter"}


def service_skip_reason(name: str) -> str | None:
    """Why ``name`` cannot be tested here (no starter weights, no built environment), or None."""
    sdir = repo_root() / "services" / name
    folder = sdir / "models" / STARTERS[name]
    if not (folder / "manifest.yaml").is_file():
        return f"{name}: starter model folder {folder} has no manifest.yaml (model not trained yet)"
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    missing = [w["path"] for w in manifest.get("weights", []) if not (folder / w["path"]).is_file()]
    if missing:
        return f"{name}: starter weights {missing} missing in {folder}"
    if name != "stardist" and not env_ready(sdir):
        return f"{name}: service environment not built (run `opsef-orchestrate services install {name}`)"
    return None


def service_client(request: pytest.FixtureRequest, name: str) -> SegmenterClient:
    """The session fixture's client of ``name``, or a skip naming why the service is not testable."""
    reason = service_skip_reason(name)
    if reason:
        pytest.skip(reason)
    return request.getfixturevalue(name)


class Served:
    """One ``opsef_protocol.serve`` process started by a test (its log is kept for assertions)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_serve(service: str, workdir: Path, args: list[str], timeout: float = 300.0) -> Served:
    """Start ``python -m opsef_protocol.serve`` of ``service`` with extra ``args``; wait until its port file is written."""
    sdir = repo_root() / "services" / service
    env_path = ensure_env(sdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port_file, log = workdir / f"{service}.port", workdir / f"{service}.log"
    port_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root() / "protos" / "src"), str(sdir / "src")]),
           "PYTHONUNBUFFERED": "1", "OPSEF_CACHE": str(cache_dir())}
    env.pop("OPSEF_TOKEN", None)
    cmd = [str(env_python(env_path)), "-m", "opsef_protocol.serve", "--service-dir", str(sdir), "--port", "0",
           "--port-file", str(port_file), "--grace-s", "2", *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=sdir)
    deadline = time.monotonic() + timeout
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise RuntimeError(f"{service} did not start ({' '.join(cmd)}):\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return Served(proc, int(port_file.read_text().strip()), log)


def copy_model(src: Path, models_dir: Path, name: str) -> Path:
    """Copy a model folder into ``models_dir`` under a new name (the manifest's name follows)."""
    dst = models_dir / name
    shutil.copytree(src, dst)
    manifest = yaml.safe_load((dst / "manifest.yaml").read_text())
    manifest["name"] = name
    (dst / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dst


# -- certificates ------------------------------------------------------------------------
def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(folder: Path, name: str, cert, key=None) -> None:
    from cryptography.hazmat.primitives import serialization

    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_certs(d: Path) -> Path:
    """Write a test CA, a server certificate (localhost, 127.0.0.1), a client certificate, and a foreign CA + client."""
    ca_key, other_key = _key(), _key()
    ca = _cert("opsef test CA", ca_key, "opsef test CA", ca_key, ca=True)
    _write_pem(d, "ca", ca, ca_key)
    _write_pem(d, "other-ca", _cert("someone else's CA", other_key, "someone else's CA", other_key, ca=True))
    server_key, client_key = _key(), _key()
    _write_pem(d, "server", _cert("localhost", server_key, "opsef test CA", ca_key, ca=False, server=True), server_key)
    _write_pem(d, "client", _cert("opsef client", client_key, "opsef test CA", ca_key, ca=False), client_key)
    rogue_key = _key()
    _write_pem(d, "rogue", _cert("rogue client", rogue_key, "someone else's CA", other_key, ca=False), rogue_key)
    return d


# -- small file systems ------------------------------------------------------------------
@contextlib.contextmanager
def mounted(cmds: list[list[str]], target: Path) -> Iterator[Path]:
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip(f"cannot mount here ({' '.join(cmd)}: {r.stderr.strip() or r.returncode}); needs root in a "
                        "container that allows mounts")
    try:
        yield target
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` (write until ENOSPC), then free ``leave`` bytes again."""
    filler = folder / "filler.bin"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
    if leave:
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave))
    return filler
