"""Local service manager: the embedded default (no Docker).

Starts each model service as a local process from its own virtualenv, on a
free loopback port, waits until health says SERVING, records the endpoints in
a state file, and stops the services gracefully. Endpoints of services run
elsewhere (docker compose, a cluster) are given with ``OPSEF_ENDPOINTS`` or
``--endpoint`` and take precedence over local processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from opsef_protocol.manifest import ManifestError, load_service_spec

from opsef_orchestrator.envs import ensure_env, env_python
from opsef_orchestrator.paths import cache_dir, repo_root, services_root

__all__ = ["ServiceManager", "ServiceStartError", "parse_endpoints", "available_services"]

logger = logging.getLogger(__name__)


class ServiceStartError(RuntimeError):
    """A service did not reach SERVING; the message holds its log tail."""


def available_services(root: Path | None = None) -> list[str]:
    """Names of the service folders (those with a valid service.yaml), sorted."""
    root = root or services_root()
    names = []
    for d in sorted(p for p in root.iterdir() if (p / "service.yaml").is_file()):
        try:
            names.append(load_service_spec(d).name)
        except ManifestError as exc:
            logger.warning("ignoring service folder: %s", exc)
    return names


def parse_endpoints(text: str | None) -> dict[str, str]:
    """Parse ``"stardist=host:port,unet=dns:///unet:50052"``; replicas as ``host:p1|host:p2``.

    Examples
    --------
    >>> parse_endpoints("stardist=127.0.0.1:5|127.0.0.1:6,unet=dns:///unet:50052")
    {'stardist': 'ipv4:127.0.0.1:5,127.0.0.1:6', 'unet': 'dns:///unet:50052'}
    """
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"endpoint {item!r} must look like NAME=HOST:PORT")
        name, target = (s.strip() for s in item.split("=", 1))
        replicas = [t.strip() for t in target.split("|") if t.strip()]
        if not name or not replicas:
            raise ValueError(f"endpoint {item!r} must look like NAME=HOST:PORT")
        out[name] = replicas[0] if len(replicas) == 1 else "ipv4:" + ",".join(replicas)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclasses.dataclass
class _Record:
    name: str
    pid: int
    port: int
    log: str
    started: float
    env: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class ServiceManager:
    """Local service processes and their state file.

    Parameters
    ----------
    state_dir : path, optional
        Where ``services.json``, port files and logs go (default
        ``$OPSEF_STATE_DIR`` or ``<repo>/.opsef/state``).
    endpoints : dict, optional
        Explicit endpoints (name -> target), merged over ``OPSEF_ENDPOINTS``.
    """

    def __init__(self, state_dir: Path | None = None, endpoints: dict[str, str] | None = None, services_dir: Path | None = None) -> None:
        env_state = os.environ.get("OPSEF_STATE_DIR")
        self.state_dir = Path(state_dir or env_state or repo_root() / ".opsef" / "state").resolve()
        self.services_dir = Path(services_dir or services_root()).resolve()
        self.explicit = {**parse_endpoints(os.environ.get("OPSEF_ENDPOINTS")), **(endpoints or {})}

    # -- state -----------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "services.json"

    def _read(self) -> dict[str, _Record]:
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: _Record(**v) for k, v in raw.items()}

    def _write(self, records: dict[str, _Record]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".services.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in records.items()}, indent=2))
        os.replace(tmp, self.state_file)

    def service_dir(self, name: str) -> Path:
        d = self.services_dir / name
        if not (d / "service.yaml").is_file():
            raise ValueError(f"unknown service {name!r}; known: {', '.join(available_services(self.services_dir))}")
        return d

    def endpoints(self) -> dict[str, str]:
        """name -> gRPC target of every known service (explicit ones first, then running local ones)."""
        out = {name: rec.address for name, rec in self._read().items() if _pid_alive(rec.pid)}
        out.update(self.explicit)
        return out

    def endpoint(self, name: str) -> str:
        eps = self.endpoints()
        if name not in eps:
            raise ValueError(
                f"service {name!r} is not running; start it with `opsef-orchestrate services up --services {name}` "
                f"or give its endpoint in OPSEF_ENDPOINTS"
            )
        return eps[name]

    def running(self, name: str) -> bool:
        rec = self._read().get(name)
        return rec is not None and _pid_alive(rec.pid)

    # -- lifecycle ---------------------------------------------------------------
    def install(self, names: list[str]) -> dict[str, Path]:
        """Build the environments of ``names`` (cached by pins)."""
        return {n: ensure_env(self.service_dir(n)) for n in names}

    def up(self, names: list[str] | None = None, *, timeout: float = 300.0, extra_args: list[str] | None = None) -> dict[str, str]:
        """Start the named services (default: all) unless running or given explicitly; wait until SERVING."""
        names = names or available_services(self.services_dir)
        records = self._read()
        started: list[_Record] = []
        for name in names:
            if name in self.explicit:
                logger.info("%s: using explicit endpoint %s", name, self.explicit[name])
                continue
            rec = records.get(name)
            if rec and _pid_alive(rec.pid):
                logger.info("%s: already running (pid %d, %s)", name, rec.pid, rec.address)
                continue
            rec = self._spawn(name, extra_args or [])
            records[name] = rec
            started.append(rec)
            self._write(records)
        for rec in started:
            self._wait_serving(rec, timeout)
        return {n: records[n].address if n in records else self.explicit[n] for n in names}

    def _spawn(self, name: str, extra_args: list[str]) -> _Record:
        sdir = self.service_dir(name)
        env_path = ensure_env(sdir)
        spec = load_service_spec(sdir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.state_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        log = self.state_dir / f"{name}.log"
        pythonpath = [str(repo_root() / "protos" / "src")] + [str((sdir / p).resolve()) for p in spec.python_path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONUNBUFFERED": "1", "OPSEF_CACHE": str(cache_dir())}
        cmd = [str(env_python(env_path)), "-m", "opsef_protocol.serve", "--service-dir", str(sdir), "--host", "127.0.0.1",
               "--port", "0", "--port-file", str(port_file), *extra_args]
        with open(log, "ab") as fh:
            fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=sdir)
        logger.info("%s: started pid %d (log %s)", name, proc.pid, log)
        self._procs = getattr(self, "_procs", {})
        old = self._procs.get(name)
        if old is not None and old.poll() is None:  # a dead predecessor whose threads are still exiting
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.wait(10.0)
        self._procs[name] = proc
        return _Record(name=name, pid=proc.pid, port=0, log=str(log), started=time.time(), env=str(env_path))

    def _log_tail(self, rec: _Record, n: int = 25) -> str:
        try:
            lines = Path(rec.log).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def _wait_serving(self, rec: _Record, timeout: float) -> None:
        from opsef_orchestrator.client import SegmenterClient

        port_file = self.state_dir / f"{rec.name}.port"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = getattr(self, "_procs", {}).get(rec.name)
            if (proc is not None and proc.poll() is not None) or not _pid_alive(rec.pid):
                raise ServiceStartError(f"service {rec.name} exited during start-up; log {rec.log}:\n{self._log_tail(rec)}")
            if port_file.is_file() and port_file.read_text().strip():
                rec.port = int(port_file.read_text().strip())
                break
            time.sleep(0.2)
        else:
            self.down([rec.name])
            raise ServiceStartError(f"service {rec.name} not SERVING after {timeout:.0f} s; log {rec.log}:\n{self._log_tail(rec)}")
        records = self._read()
        records[rec.name] = rec
        self._write(records)
        with SegmenterClient(rec.address) as client:
            client.wait_serving(timeout=max(5.0, deadline - time.monotonic()))
        logger.info("%s: SERVING on %s", rec.name, rec.address)

    def down(self, names: list[str] | None = None, *, grace: float = 15.0) -> list[str]:
        """Stop local services gracefully (SIGTERM, then SIGKILL after ``grace``)."""
        records = self._read()
        names = names or list(records)
        stopped = []
        for name in names:
            rec = records.pop(name, None)
            if rec is None:
                continue
            if _pid_alive(rec.pid):
                try:
                    os.kill(rec.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + grace
                while _pid_alive(rec.pid) and time.monotonic() < deadline:
                    self._reap(name)
                    time.sleep(0.1)
                if _pid_alive(rec.pid):
                    logger.warning("%s: did not stop in %.0f s, killing", name, grace)
                    os.kill(rec.pid, signal.SIGKILL)
                self._reap(name, wait=10.0)
            stopped.append(name)
            self._write(records)
        return stopped

    def _reap(self, name: str, wait: float = 0.0) -> None:
        proc = getattr(self, "_procs", {}).get(name)
        if proc is not None:
            # The leader thread shows as a zombie while other threads still exit: wait for the real exit.
            if wait:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
            else:
                proc.poll()

    def restart(self, name: str, timeout: float = 300.0) -> str:
        self.down([name])
        return self.up([name], timeout=timeout)[name]

    def ensure_running(self, name: str, timeout: float = 300.0) -> str:
        """Endpoint of ``name``, restarting its local process if it died (explicit endpoints are left alone)."""
        if name in self.explicit:
            return self.explicit[name]
        rec = self._read().get(name)
        if rec is None or not _pid_alive(rec.pid):
            logger.warning("%s: not running; starting it", name)
            self._reap(name)
            return self.up([name], timeout=timeout)[name]
        return rec.address

    def logs(self, name: str, lines: int = 50) -> str:
        log = self.state_dir / f"{name}.log"
        if not log.is_file():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def status(self, names: list[str] | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Health, framework, versions, device and models of each service."""
        import grpc

        from opsef_orchestrator.client import SegmenterClient

        eps = self.endpoints()
        names = names or sorted(set(available_services(self.services_dir)) | set(eps))
        out = []
        for name in names:
            row: dict[str, Any] = {"service": name, "endpoint": eps.get(name, ""), "status": "STOPPED"}
            if name in eps:
                try:
                    with SegmenterClient(eps[name]) as c:
                        row["status"] = c.health_status(timeout=timeout)
                        info = c.info(timeout=timeout)
                        row.update(
                            framework=info.framework,
                            framework_version=info.framework_version,
                            device=info.device,
                            protocol=info.protocol_version,
                            versions=dict(info.library_versions),
                            models=[
                                {"name": m.name, "version": m.version, "source": m.source, "dims": list(m.dims),
                                 "weights_present": m.weights_present}
                                for m in c.models(timeout=timeout)
                            ],
                        )
                except grpc.RpcError as exc:
                    row["status"] = f"UNREACHABLE ({exc.code().name})"
            out.append(row)
        return out
