"""The one server runner every model service uses.

It wraps an :class:`~opsef_protocol.adapter.Adapter` class in a thin
``Segmenter`` servicer and adds what every service needs: ``grpc.health.v1``
health (per service name), server reflection, deliberate message-size limits,
a bounded number of concurrent predictions with a bounded queue (beyond it:
RESOURCE_EXHAUSTED at once), deadline/cancellation checks, optional TLS/mTLS and
token authentication, and graceful shutdown on SIGTERM/SIGINT.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from opsef_protocol import __version__
from opsef_protocol.adapter import Adapter, RuntimeInfo, RuntimeOptions, validate_image
from opsef_protocol.codec import TensorError, from_tensor, to_tensor
from opsef_protocol.errors import InvalidArgument, OutOfMemory, ResourceExhausted, ServiceError, WeightsUnavailable
from opsef_protocol.manifest import ModelManifest, ModelRegistry, verify_weights
from opsef_protocol.params import params_from_proto, params_to_proto, validate_params
from opsef_protocol.v1 import PROTOCOL_VERSION, SERVICE_NAME, segmenter_pb2 as pb, segmenter_pb2_grpc as pb_grpc

__all__ = ["ServerConfig", "SegmenterServicer", "build_server", "run_server", "count_objects", "weights_digest", "DEFAULT_MAX_MESSAGE_BYTES"]

logger = logging.getLogger(__name__)

#: Default request/response size limit: 256 MiB (a 4096x4096 float32 image is 64 MiB;
#: an 8192x8192 float32 image, 256 MiB, must be tiled by the orchestrator).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

#: Test hook: with this environment variable set to N > 0, every Segment request whose image
#: has more than N spatial pixels fails with OutOfMemory (RESOURCE_EXHAUSTED, reason
#: "out_of_memory") before prediction, so the orchestrator's smaller-tiles and CPU-fallback
#: paths can be tested on a CPU. Never set it in production.
TEST_OOM_ENV = "OPSEF_TEST_OOM_ABOVE_PIXELS"


@dataclasses.dataclass
class ServerConfig:
    """Settings of one service process."""

    service_name: str
    models_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_concurrent: int = 1
    max_queue: int = 16
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_loaded_models: int = 4
    max_connection_age_s: float = 0.0
    grace_s: float = 10.0
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token: str | None = None
    preload: tuple[str, ...] = ()


def weights_digest(manifest: ModelManifest) -> str:
    """The sha256 of a model's single weight file, or of the sorted ``path:sha256`` lines of several.

    Changes whenever any weight file changes, so results cached by it are never stale.
    """
    if len(manifest.weights) == 1:
        return manifest.weights[0].sha256
    lines = "\n".join(sorted(f"{w.path}:{w.sha256}" for w in manifest.weights))
    return hashlib.sha256(lines.encode()).hexdigest() if lines else ""


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels (bincount when ids are dense, which avoids sorting).

    Examples
    --------
    >>> count_objects(np.array([[0, 5], [9, 5]], np.uint32))
    2
    """
    if labels.size == 0:
        return 0
    top = int(labels.max())
    if top <= 4 * labels.size + 1024:
        return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    ids = np.unique(labels)
    return int(len(ids) - (ids[0] == 0))


class _Slots:
    """At most ``concurrent`` predictions at once and ``queue`` waiting; more is refused."""

    def __init__(self, concurrent: int, queue: int) -> None:
        self._sem = threading.Semaphore(concurrent)
        self._lock = threading.Lock()
        self._waiting = 0
        self._queue = queue

    def acquire(self, context: grpc.ServicerContext) -> float:
        t0 = time.perf_counter()
        if self._sem.acquire(blocking=False):
            return 0.0
        with self._lock:
            if self._waiting >= self._queue:
                raise ResourceExhausted(f"service busy: all prediction slots and the queue ({self._queue}) are full; retry later")
            self._waiting += 1
        try:
            while not self._sem.acquire(timeout=0.1):
                if not context.is_active():
                    raise _Cancelled()
            return time.perf_counter() - t0
        finally:
            with self._lock:
                self._waiting -= 1

    def release(self) -> None:
        self._sem.release()


class _Cancelled(Exception):
    pass


class SegmenterServicer(pb_grpc.SegmenterServicer):
    """Thin gRPC wrapper around an adapter class and a models directory."""

    def __init__(self, adapter_cls: type[Adapter], config: ServerConfig, info: RuntimeInfo) -> None:
        self.adapter_cls = adapter_cls
        self.config = config
        self.info = info
        self.registry = ModelRegistry(config.models_dir, family=adapter_cls.family)
        self._slots = _Slots(config.max_concurrent, config.max_queue)
        self._loaded: collections.OrderedDict[str, Adapter] = collections.OrderedDict()
        self._load_lock = threading.Lock()
        self._test_oom_above = int(os.environ.get(TEST_OOM_ENV, "0") or 0)
        if self._test_oom_above > 0:
            logger.warning("test hook %s=%d: images above that many pixels fail with out_of_memory",
                           TEST_OOM_ENV, self._test_oom_above)

    # -- model cache -------------------------------------------------------
    def adapter_for(self, name: str) -> Adapter:
        """The loaded adapter of a model (loaded on first use, weights verified first)."""
        manifest = self.registry.get(name)
        with self._load_lock:
            adapter = self._loaded.get(name)
            if adapter is not None and adapter.manifest == manifest:
                self._loaded.move_to_end(name)
                return adapter
            folder = self.registry.folder(name)
            verify_weights(manifest, folder)
            adapter = self.adapter_cls(manifest, folder, self.config.runtime)
            t0 = time.perf_counter()
            adapter.load()
            logger.info("loaded model %s %s in %.2f s", name, manifest.version, time.perf_counter() - t0)
            self._loaded[name] = adapter
            while len(self._loaded) > self.config.max_loaded_models:
                _, old = self._loaded.popitem(last=False)
                old.unload()
            return adapter

    # -- RPCs --------------------------------------------------------------
    def GetServiceInfo(self, request: pb.GetServiceInfoRequest, context: grpc.ServicerContext) -> pb.ServiceInfo:
        versions = {"numpy": np.__version__, "grpcio": grpc.__version__, "opsef-protocol": __version__}
        versions.update(self.info.library_versions)
        return pb.ServiceInfo(
            service_name=self.config.service_name,
            framework=self.info.framework,
            framework_version=self.info.framework_version,
            device=self.info.device,
            protocol_version=PROTOCOL_VERSION,
            service_version=__version__,
            library_versions=versions,
            max_message_bytes=self.config.max_message_bytes,
            max_concurrent_predictions=self.config.max_concurrent,
            max_queued_requests=self.config.max_queue,
            devices_available=list(self.info.devices_available),
            cpu_threads=self.info.cpu_threads,
        )

    def _model_info(self, m: ModelManifest) -> pb.ModelInfo:
        folder = self.registry.root / m.name
        if m.source == "published":
            location, present = self.adapter_cls.published_weights(m, self.config.runtime)
            sha = ""
        else:
            location = str(folder)
            present = self.registry.weights_present(m.name)
            sha = weights_digest(m)
        return pb.ModelInfo(
            name=m.name,
            version=m.version,
            source=m.source,
            dims=list(m.dims),
            axes=list(m.axes),
            channels=m.channels,
            defaults=params_to_proto(m.defaults),
            weights_present=present,
            description=m.description,
            weights_location=location,
            weights_sha256=sha,
            metrics=dict(m.metrics),
            min_size_px=m.min_size_px,
        )

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self.registry.refresh()
        return pb.ListModelsResponse(models=[self._model_info(m) for m in self.registry.manifests()])

    def Segment(self, request: pb.SegmentRequest, context: grpc.ServicerContext) -> pb.SegmentResponse:
        rid = request.request_id or "-"
        try:
            return self._segment(request, context)
        except _Cancelled:
            logger.info("request %s cancelled or past its deadline before prediction", rid)
            context.abort(grpc.StatusCode.CANCELLED, "request cancelled or deadline exceeded before prediction")
        except ServiceError as exc:
            logger.info("request %s: %s: %s", rid, exc.code.name, exc)
            if isinstance(exc, OutOfMemory):  # a negative pushback stops gRPC's transparent retries: same request, same OOM
                context.set_trailing_metadata((("opsef-reason", exc.reason), ("grpc-retry-pushback-ms", "-1")))
            elif isinstance(exc, ResourceExhausted):
                context.set_trailing_metadata((("opsef-reason", exc.reason),))
            context.abort(exc.code, str(exc))
        except TensorError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"image: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bad request must never take the service down
            logger.exception("request %s failed", rid)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _segment(self, request: pb.SegmentRequest, context: grpc.ServicerContext) -> pb.SegmentResponse:
        t0 = time.perf_counter()
        manifest = self.registry.get(request.model)
        if not request.HasField("image"):
            raise InvalidArgument("request has no image")
        image, axes = from_tensor(request.image)
        image = validate_image(image, axes, manifest)
        params = validate_params(params_from_proto(request.parameters))
        if self._test_oom_above > 0:
            pixels = int(np.prod([s for s, a in zip(image.shape, axes) if a != "C"]))
            if pixels > self._test_oom_above:
                raise OutOfMemory(f"out of memory ({TEST_OOM_ENV}={self._test_oom_above}): image of {pixels} pixels")
        merged = {**manifest.defaults, **params}
        t_decode = time.perf_counter() - t0
        queue_s = self._slots.acquire(context)
        try:
            if not context.is_active():
                raise _Cancelled()
            adapter = self.adapter_for(request.model)
            t1 = time.perf_counter()
            labels = adapter.predict(image, axes, merged)
            t_predict = time.perf_counter() - t1
        finally:
            self._slots.release()
        spatial = tuple(s for s, a in zip(image.shape, axes) if a != "C")
        labels = np.asarray(labels)
        if labels.shape != spatial:
            raise RuntimeError(f"adapter returned labels of shape {labels.shape}, expected {spatial}")
        if labels.dtype != np.uint32:
            if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint32).max):
                raise RuntimeError("adapter returned labels outside the uint32 range")
            labels = labels.astype(np.uint32)
        t2 = time.perf_counter()
        tensor = to_tensor(labels, axes.replace("C", ""))
        count = count_objects(labels)
        t_encode = time.perf_counter() - t2
        logger.info(
            "request %s model %s shape %s: %d objects, decode %.3f s, queue %.3f s, predict %.3f s, encode %.3f s",
            request.request_id or "-", request.model, tuple(image.shape), count, t_decode, queue_s, t_predict, t_encode,
        )
        return pb.SegmentResponse(
            labels=tensor,
            model=manifest.name,
            model_version=manifest.version,
            timings=pb.Timings(decode_s=t_decode, predict_s=t_predict, encode_s=t_encode, queue_s=queue_s),
            object_count=count,
            parameters_used=params_to_proto(merged),
            device=self.info.device,
        )


class _TokenInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on Segmenter calls (health and reflection stay open for probes)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (metadata 'authorization: Bearer ...')")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method or ""
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return continuation(handler_call_details)
        return self._deny


def build_server(adapter_cls: type[Adapter], config: ServerConfig) -> tuple[grpc.Server, int, health.HealthServicer, SegmenterServicer]:
    """Create (not start) the server; returns it, the bound port, the health servicer and the servicer.

    The framework is imported here (``adapter_cls.runtime_info``); health says
    NOT_SERVING until :func:`run_server` marks it SERVING after start-up.
    """
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.grace_s * 1000)),
        ]
    interceptors = [_TokenInterceptor(config.token)] if config.token else []
    workers = config.max_concurrent + config.max_queue + 4
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="opsef-rpc"),
                         options=options, interceptors=interceptors, maximum_concurrent_rpcs=workers + 16)
    health_servicer = health.HealthServicer(experimental_non_blocking=True,
                                            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1))
    for name in ("", SERVICE_NAME, config.service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    info = adapter_cls.runtime_info(config.runtime)
    servicer = SegmenterServicer(adapter_cls, config, info)
    pb_grpc.add_SegmenterServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}" if ":" not in config.host else f"[{config.host}]:{config.port}"
    if config.tls_cert and config.tls_key:
        ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port, health_servicer, servicer


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_server(adapter_cls: type[Adapter], config: ServerConfig, port_file: Path | None = None) -> int:
    """Run a service until SIGTERM/SIGINT; returns the exit code."""
    server, port, health_servicer, servicer = build_server(adapter_cls, config)
    server.start()
    for name in config.preload:
        try:
            servicer.adapter_for(name)
        except ServiceError as exc:
            logger.warning("could not preload model %s: %s", name, exc)
    for name in ("", SERVICE_NAME, config.service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "service %s SERVING on %s:%d (%s %s, device %s, models: %s)",
        config.service_name, config.host, port, servicer.info.framework, servicer.info.framework_version,
        servicer.info.device, ", ".join(servicer.registry.names) or "none",
    )
    if port_file is not None:
        _write_atomic(port_file, f"{port}\n")
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        logger.info("signal %d: shutting down gracefully (grace %.0f s)", signum, config.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace_s).wait()
    logger.info("service %s stopped", config.service_name)
    return 0
