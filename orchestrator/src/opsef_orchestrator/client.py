"""gRPC client of the ``Segmenter`` service, with retries, deadlines and load balancing.

Targets are ``host:port`` or any gRPC target; ``dns:///name:port`` resolves all
replicas behind a name and balances over them (round_robin).

Examples
--------
>>> c = SegmenterClient("127.0.0.1:1", timeout=0.2, attempts=1)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from opsef_protocol.codec import from_tensor, to_tensor
from opsef_protocol.params import params_from_proto, params_to_proto
from opsef_protocol.server import DEFAULT_MAX_MESSAGE_BYTES
from opsef_protocol.v1 import SERVICE_NAME, segmenter_pb2 as pb, segmenter_pb2_grpc as pb_grpc

__all__ = ["SegmenterClient", "SegmentResult", "SegmentError", "RETRYABLE", "channel_options"]

logger = logging.getLogger(__name__)

#: Status codes worth retrying (with backoff): the service restarting, busy, or slow.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)


class SegmentError(RuntimeError):
    """A Segment call that failed for good; carries the status code and the service's message."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str, reason: str = "") -> None:
        super().__init__(f"{target}: {code.name}: {details}")
        self.code, self.details, self.target, self.reason = code, details, target, reason


@dataclasses.dataclass(frozen=True)
class SegmentResult:
    labels: np.ndarray
    model: str
    model_version: str
    object_count: int
    timings: dict[str, float]
    parameters: dict[str, Any]
    device: str
    attempts: int = 1


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Channel options: message limits, round-robin balancing, and gRPC's own retry policy."""
    service_config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": SERVICE_NAME}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }],
    }
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
    ]


class SegmenterClient:
    """One service (one target, possibly many replicas).

    Parameters
    ----------
    target : str
        ``host:port`` or a gRPC target such as ``dns:///stardist:50051``.
    timeout : float
        Deadline of each Segment call in seconds.
    attempts : int
        Total attempts on retryable errors (UNAVAILABLE, RESOURCE_EXHAUSTED,
        DEADLINE_EXCEEDED), with exponential backoff and jitter.
    token : str, optional
        Shared token sent as ``authorization: Bearer <token>``.
    tls_ca, tls_cert, tls_key : path, optional
        TLS: the CA to trust, and a client certificate and key for mutual TLS.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 600.0,
        attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 15.0,
        token: str | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        opts = channel_options(max_message_bytes)
        if tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            self.channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(target, options=opts)
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SegmenterClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------
    def health_status(self, timeout: float = 3.0) -> str:
        """SERVING, NOT_SERVING, ... of the Segmenter service; raises ``grpc.RpcError`` if unreachable."""
        resp = self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Block until the service is SERVING or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        last = "unreachable"
        while time.monotonic() < deadline:
            try:
                last = self.health_status(timeout=min(3.0, max(0.1, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.2)
        raise TimeoutError(f"{self.target} not SERVING after {timeout:.0f} s (last: {last})")

    def info(self, timeout: float = 10.0) -> pb.ServiceInfo:
        return self.stub.GetServiceInfo(pb.GetServiceInfoRequest(), timeout=timeout, metadata=self._metadata)

    def models(self, timeout: float = 10.0) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout, metadata=self._metadata).models)

    def segment(
        self,
        image: np.ndarray,
        axes: str,
        model: str,
        params: dict[str, Any] | None = None,
        *,
        request_id: str = "",
        timeout: float | None = None,
    ) -> SegmentResult:
        """Segment one image; retries retryable errors with backoff, raises :class:`SegmentError` otherwise."""
        request = pb.SegmentRequest(model=model, image=to_tensor(image, axes), parameters=params_to_proto(params or {}), request_id=request_id)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self.stub.Segment(request, timeout=timeout or self.timeout, metadata=self._metadata)
                labels, _ = from_tensor(resp.labels)
                t = resp.timings
                return SegmentResult(
                    labels=labels,
                    model=resp.model,
                    model_version=resp.model_version,
                    object_count=resp.object_count,
                    timings={"decode_s": t.decode_s, "predict_s": t.predict_s, "encode_s": t.encode_s, "queue_s": t.queue_s},
                    parameters=params_from_proto(resp.parameters_used),
                    device=resp.device,
                    attempts=attempt,
                )
            except grpc.RpcError as exc:
                code = exc.code()
                reason = dict(exc.trailing_metadata() or ()).get("opsef-reason", "") if hasattr(exc, "trailing_metadata") else ""
                if code in RETRYABLE and attempt < self.attempts and reason != "out_of_memory":
                    sleep = min(self.max_backoff, delay) * (0.5 + random.random())
                    logger.warning("%s: %s (%s); retry %d/%d in %.1f s", self.target, code.name, exc.details(), attempt, self.attempts - 1, sleep)
                    time.sleep(sleep)
                    delay *= 2
                    continue
                raise SegmentError(code, exc.details() or "", self.target, reason) from None
        raise AssertionError("unreachable")  # pragma: no cover
