"""Start one model service: ``python -m opsef_protocol.serve --service-dir services/stardist``.

Arguments are parsed and the environment (caches, thread counts) is set up
before the adapter module, and so any framework, is imported.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from opsef_protocol.manifest import ManifestError, load_service_spec

__all__ = ["main", "build_parser", "redirect_caches"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opsef-serve", description="Run an OpSeF model service (gRPC Segmenter).")
    p.add_argument("--service-dir", required=True, type=Path, help="folder with service.yaml")
    p.add_argument("--models-dir", type=Path, help="models folder (default: the service's models_dir)")
    p.add_argument("--host", default=os.environ.get("OPSEF_HOST", "127.0.0.1"),
                   help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=None, help="port (default: service.yaml default_port; 0 = any free port)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once SERVING")
    p.add_argument("--device", default=os.environ.get("OPSEF_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OPSEF_THREADS", "0")), help="CPU threads (0 = default)")
    p.add_argument("--memory-fraction", type=float, default=0.0, help="GPU memory cap as a fraction (0 = none)")
    p.add_argument("--cache-dir", type=Path, help="framework caches (default: $OPSEF_CACHE/frameworks/<service>)")
    p.add_argument("--max-concurrent", type=int, default=1, help="predictions at once")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot before RESOURCE_EXHAUSTED")
    p.add_argument("--max-message-mb", type=int, default=256, help="largest request/response in MiB")
    p.add_argument("--max-connection-age-s", type=float, default=0.0, help="close connections after this age (cluster balancing)")
    p.add_argument("--grace-s", type=float, default=10.0, help="graceful shutdown time")
    p.add_argument("--preload", action="append", default=[], help="model to load at start-up (repeatable)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM) for TLS")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="CA that client certificates must chain to (mutual TLS)")
    p.add_argument("--token-file", type=Path, help="file holding a shared token clients must send (or $OPSEF_TOKEN)")
    p.add_argument("--log-level", default=os.environ.get("OPSEF_LOG_LEVEL", "INFO"))
    return p


def redirect_caches(cache_dir: Path) -> None:
    """Point every framework cache we know of into ``cache_dir`` (nothing goes to $HOME)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for var, sub in (
        ("KERAS_HOME", "keras"),
        ("CELLPOSE_LOCAL_MODELS_PATH", "cellpose"),
        ("NUMBA_CACHE_DIR", "numba"),
        ("MPLCONFIGDIR", "matplotlib"),
        ("TORCH_HOME", "torch"),
        ("XDG_CACHE_HOME", "xdg"),
    ):
        os.environ.setdefault(var, str(cache_dir / sub))


def _fail(msg: str) -> int:
    sys.stderr.write(f"opsef-serve: error: {msg}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service_dir = args.service_dir.resolve()
    try:
        spec = load_service_spec(service_dir)
    except ManifestError as exc:
        return _fail(str(exc))
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)
    cache_base = Path(os.environ.get("OPSEF_CACHE", Path.home() / ".cache" / "opsef"))
    cache_dir = (args.cache_dir or cache_base / "frameworks" / spec.name).resolve()
    try:
        redirect_caches(cache_dir)
    except OSError as exc:
        return _fail(f"cache folder {cache_dir} is not writable ({exc.strerror}); pass --cache-dir")
    if args.threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    for extra in reversed(spec.python_path):
        sys.path.insert(0, str((service_dir / extra).resolve()))
    token = os.environ.get("OPSEF_TOKEN") or (args.token_file.read_text().strip() if args.token_file else None)
    if bool(args.tls_cert) != bool(args.tls_key):
        return _fail("--tls-cert and --tls-key go together")

    # Only now: import the adapter (and, lazily, the server and its framework).
    from opsef_protocol.adapter import RuntimeOptions
    from opsef_protocol.server import ServerConfig, run_server

    module_name, class_name = spec.adapter.split(":")
    adapter_cls = getattr(importlib.import_module(module_name), class_name)
    config = ServerConfig(
        service_name=spec.name,
        models_dir=(args.models_dir or service_dir / spec.models_dir).resolve(),
        host=args.host,
        port=spec.default_port if args.port is None else args.port,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_connection_age_s=args.max_connection_age_s,
        grace_s=args.grace_s,
        runtime=RuntimeOptions(device=args.device, threads=args.threads, memory_fraction=args.memory_fraction,
                               cache_dir=cache_dir, options=dict(spec.adapter_options)),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token=token,
        preload=tuple(args.preload),
    )
    return run_server(adapter_cls, config, port_file=args.port_file)


if __name__ == "__main__":
    raise SystemExit(main())
