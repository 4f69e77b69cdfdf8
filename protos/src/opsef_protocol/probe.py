"""Health probe: ``python -m opsef_protocol.probe HOST:PORT`` exits 0 when the service is SERVING.

For container health checks (no shell curl) and scripts.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main", "check_health"]


def check_health(address: str, service: str = "", timeout: float = 3.0) -> str:
    """Return the health status name (SERVING, NOT_SERVING, ...) of ``service`` at ``address``.

    Raises ``grpc.RpcError`` when the server cannot be reached in ``timeout`` seconds.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="opsef-probe", description=__doc__.splitlines()[0])
    p.add_argument("address", help="HOST:PORT of the service")
    p.add_argument("--service", default="opsef.segmenter.v1.Segmenter", help="health service name ('' = whole server)")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    import grpc

    try:
        status = check_health(args.address, args.service, args.timeout)
    except grpc.RpcError as exc:
        sys.stderr.write(f"{args.address}: unreachable ({exc.code().name}: {exc.details()})\n")
        return 1
    sys.stdout.write(f"{args.address} {args.service or '<server>'}: {status}\n")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
