"""Conformance suite: the same inputs through ``Segment`` on every service give valid labels.

Parametrised over services (see conftest.py); run it against one new service with
``.venv/bin/python -m pytest tests/conformance --service-dir services/NAME``.
Each service runs as a real process from its own environment, with
``--device cpu --threads 2 --max-queue 1 --max-message-mb 32``, caches in a
temporary folder, ``HOME`` read-only and the server's out-of-memory test hook armed.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from opsef_orchestrator.client import SegmentError, SegmentResult
from opsef_protocol.codec import to_tensor
from opsef_protocol.manifest import ModelRegistry
from opsef_protocol.v1 import PROTOCOL_VERSION, SERVICE_NAME, segmenter_pb2 as pb, segmenter_pb2_grpc as pb_grpc

from tests.conformance._support import (
    CORRUPT_MODEL,
    MAX_MESSAGE_MB,
    MAX_QUEUE,
    OOM_PIXELS,
    THREADS,
    ServiceProcess,
    blob_image,
    many_blobs,
    serve_command,
)

#: Odd sizes: 1-pixel images and margins, non-multiples of any network stride (2^k), 695x697.
ODD_SHAPES = [(1, 1), (1, 9), (2, 3), (5, 5), (16, 17), (31, 33), (63, 65), (129, 127), (695, 697)]
DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float16", "float32", "float64"]
#: Axes strings no model accepts (the codec carries them; the service must refuse them).
ALWAYS_REJECTED = {"XY": (32, 32), "CYX": (3, 32, 32), "YXZ": (32, 32, 4), "TYX": (2, 32, 32), "XYC": (32, 32, 1)}


# ---------------------------------------------------------------------------- helpers
_MODELS: dict[str, dict[str, pb.ModelInfo]] = {}


def _models(address: str, service: ServiceProcess) -> dict[str, pb.ModelInfo]:
    if address not in _MODELS:
        _MODELS[address] = {m.name: m for m in service.client.models()}
    return _MODELS[address]


def _primary(service: ServiceProcess) -> pb.ModelInfo:
    """The model the suite drives: the first project/user model whose weights are present."""
    models = _models(service.address, service)
    usable = [m for m in models.values() if m.name != CORRUPT_MODEL and m.weights_present and m.source != "published"]
    usable = usable or [m for m in models.values() if m.name != CORRUPT_MODEL and m.weights_present]
    usable.sort(key=lambda m: 3 in m.dims)  # a 2D model where there is one (Z-stacks of the large sizes exceed limits)
    if not usable:
        pytest.fail(f"service {service.name} has no model with weights present: {sorted(models)}")
    return usable[0]


def _axes2d(model: pb.ModelInfo) -> str:
    for axes in ("YX", "YXC", "ZYX", "ZYXC"):
        if axes in model.axes:
            return axes
    raise AssertionError(f"model {model.name} lists no usable axes: {list(model.axes)}")


def _image(model: pb.ModelInfo, yx: tuple[int, int], dtype: str = "uint16", seed: int = 0) -> tuple[np.ndarray, str]:
    """An image of spatial size ``yx`` in the model's first accepted axes (Z = 4, C = 1 where needed)."""
    axes = _axes2d(model)
    img = blob_image(yx, dtype=dtype, seed=seed)
    if axes.startswith("Z"):
        img = np.stack([img] * 4)
    if axes.endswith("C"):
        img = img[..., None]
    return img, axes


def _check_labels(res: SegmentResult, spatial: tuple[int, ...]) -> None:
    labels = res.labels
    assert labels.shape == tuple(spatial), f"labels {labels.shape} for an image of spatial shape {spatial}"
    assert labels.dtype == np.uint32
    ids = np.unique(labels)
    assert res.object_count == int((ids != 0).sum())
    assert res.device == "cpu"


def _call(service: ServiceProcess, image: np.ndarray, axes: str, model: str, params: dict | None = None,
          timeout: float = 300) -> SegmentResult:
    try:
        return service.client.segment(image, axes, model, params, timeout=timeout)
    except SegmentError as exc:
        raise AssertionError(f"{exc}\nservice log:\n{service.log_tail()}") from None


def _error(service: ServiceProcess, image: np.ndarray, axes: str, model: str, params: dict | None = None) -> SegmentError:
    with pytest.raises(SegmentError) as info:
        service.client.segment(image, axes, model, params, timeout=120)
    return info.value


def _raw_channel(service: ServiceProcess) -> grpc.Channel:
    """A channel without gRPC's own retries, with room for messages beyond the service's limit."""
    limit = 4 * MAX_MESSAGE_MB * 1024 * 1024
    return grpc.insecure_channel(service.address, options=[("grpc.enable_retries", 0), ("grpc.max_send_message_length", limit),
                                                           ("grpc.max_receive_message_length", limit)])


def _assert_serving(service: ServiceProcess) -> None:
    assert service.proc.poll() is None, f"service died:\n{service.log_tail()}"
    assert service.client.health_status() == "SERVING"


# ---------------------------------------------------------------------------- health, reflection, info
def test_health_serving_for_every_name(service: ServiceProcess) -> None:
    stub = health_pb2_grpc.HealthStub(service.client.channel)
    for name in ("", SERVICE_NAME, service.name):
        status = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_protocol(service: ServiceProcess) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(service.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(db.get_services())
        from google.protobuf import descriptor_pool

        svc = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE_NAME)
        assert set(svc.methods_by_name) == {"GetServiceInfo", "ListModels", "Segment"}


def test_service_info_reports_what_is_in_effect(service: ServiceProcess) -> None:
    info = service.client.info()
    assert info.service_name == service.name
    assert info.framework == service.spec.framework and info.framework_version
    assert info.protocol_version == PROTOCOL_VERSION and info.service_version
    assert info.device == "cpu" and "cpu" in info.devices_available
    assert info.cpu_threads == THREADS, "--threads must be applied and reported"
    assert info.max_message_bytes == MAX_MESSAGE_MB * 1024 * 1024
    assert info.max_concurrent_predictions == 1 and info.max_queued_requests == MAX_QUEUE
    assert {"numpy", "grpcio", "opsef-protocol"} <= set(info.library_versions)


def test_list_models_matches_the_manifests(service: ServiceProcess) -> None:
    listed = _models(service.address, service)
    registry = ModelRegistry(service.models_dir)
    assert sorted(listed) == registry.names
    for m in registry.manifests():
        info = listed[m.name]
        assert (info.version, info.source, list(info.dims), list(info.axes)) == (m.version, m.source, list(m.dims), list(m.axes))
        assert info.channels == m.channels and info.min_size_px == m.min_size_px
        if m.source != "published":
            assert info.weights_present == registry.weights_present(m.name)
    assert _primary(service).weights_present


# ---------------------------------------------------------------------------- shapes, dtypes, axes
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=[f"{y}x{x}" for y, x in ODD_SHAPES])
def test_odd_sizes_give_labels_of_the_input_shape(service: ServiceProcess, shape: tuple[int, int]) -> None:
    model = _primary(service)
    img, axes = _image(model, shape, seed=sum(shape))
    res = _call(service, img, axes, model.name)
    _check_labels(res, img.shape[: len(axes.replace("C", ""))])
    assert res.model == model.name and res.model_version == model.version


@pytest.mark.slow
def test_very_large_image(service: ServiceProcess) -> None:
    model = _primary(service)
    img, axes = _image(model, (2048, 2048), seed=5)
    res = _call(service, img, axes, model.name, timeout=900)
    _check_labels(res, img.shape[: len(axes.replace("C", ""))])
    assert res.object_count > 0, "a 2048x2048 image of bright blobs gave no objects"


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_accepted_dtype(service: ServiceProcess, dtype: str) -> None:
    model = _primary(service)
    img, axes = _image(model, (96, 80), dtype=dtype, seed=1)
    _check_labels(_call(service, img, axes, model.name), img.shape[: len(axes.replace("C", ""))])


def test_every_supported_axes_string(service: ServiceProcess) -> None:
    model = _primary(service)
    base = blob_image((72, 88), seed=2)
    for axes in model.axes:
        img = np.stack([base] * 5) if axes.startswith("Z") else base
        channel_counts = [1, 2, 3, 4] if axes.endswith("C") else [0]
        for c in channel_counts:
            x = np.stack([img] * c, axis=-1) if c else img
            res = _call(service, x, axes, model.name)
            _check_labels(res, x.shape[: len(axes.replace("C", ""))])


def test_rejected_axes_strings(service: ServiceProcess) -> None:
    model = _primary(service)
    rejected = dict(ALWAYS_REJECTED)
    for axes, shape in (("YX", (32, 32)), ("YXC", (32, 32, 1)), ("ZYX", (4, 32, 32)), ("ZYXC", (4, 32, 32, 1))):
        if axes not in model.axes:
            rejected[axes] = shape
    for axes, shape in rejected.items():
        e = _error(service, np.zeros(shape, np.uint8), axes, model.name)
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT and repr(axes) in e.details, (axes, e.details)
    c_axes = next((a for a in model.axes if a.endswith("C")), None)
    if c_axes:
        shape = (4, 32, 32, 5) if c_axes.startswith("Z") else (32, 32, 5)
        e = _error(service, np.zeros(shape, np.uint8), c_axes, model.name)
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "channels" in e.details
    # letters the codec does not know, and axes that do not match the shape, straight over the wire
    for axes, shape in (("QYX", [2, 8, 8]), ("YX", [2, 8, 8]), ("YY", [8, 8])):
        req = pb.SegmentRequest(model=model.name, image=pb.Tensor(dtype=pb.UINT8, shape=shape, axes=axes,
                                                                  data=b"\0" * int(np.prod(shape))))
        with pytest.raises(grpc.RpcError) as info:
            service.client.stub.Segment(req, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, axes
    _assert_serving(service)


@pytest.mark.parametrize("fill", ["zeros", "constant_uint16", "constant_float", "zeros_695x697"])
def test_empty_and_constant_images_give_no_objects(service: ServiceProcess, fill: str) -> None:
    model = _primary(service)
    img, axes = _image(model, (695, 697) if fill.endswith("697") else (128, 120))
    value = {"zeros": 0, "constant_uint16": 700, "constant_float": 0.5, "zeros_695x697": 0}[fill]
    img = np.full(img.shape, value, np.float32 if fill == "constant_float" else np.uint16)
    res = _call(service, img, axes, model.name)
    _check_labels(res, img.shape[: len(axes.replace("C", ""))])
    assert res.object_count == 0 and not res.labels.any()


# ---------------------------------------------------------------------------- more than 65,535 objects
@pytest.mark.slow
def test_more_than_65535_objects(service: ServiceProcess) -> None:
    """70,000 separate 3x3 squares: labels must not wrap at 16 bits.

    A model that does not find such tiny objects skips here; the label path of the
    codec and the response is then covered by test_label_path.py for every service.
    """
    model = _primary(service)
    img, n = many_blobs()
    axes = _axes2d(model)
    x = img if axes == "YX" else (img[..., None] if axes == "YXC" else None)
    if x is None:
        pytest.skip(f"model {model.name} takes no 2D image")
    res = _call(service, x, axes, model.name, timeout=900)
    _check_labels(res, img.shape)
    if res.object_count <= 65535:
        pytest.skip(f"model {model.name} finds {res.object_count} of {n} 3x3-pixel objects (not a model for them)")
    assert int(res.labels.max()) >= res.object_count > 65535
    assert res.object_count >= 0.95 * n


# ---------------------------------------------------------------------------- status codes
def test_not_found_and_invalid_argument(service: ServiceProcess) -> None:
    model = _primary(service)
    img, axes = _image(model, (32, 32))
    e = _error(service, img, axes, "no_such_model")
    assert e.code == grpc.StatusCode.NOT_FOUND and model.name in e.details
    for bad_name in ("../etc", "a/b", ""):
        e = _error(service, img, axes, bad_name)
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT, bad_name
    e = _error(service, np.full(img.shape, np.nan, np.float32), axes, model.name)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in e.details
    e = _error(service, np.zeros(img.shape, bool), axes, model.name)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "bool" in e.details
    e = _error(service, np.zeros((0,) + img.shape[1:], np.uint8), axes, model.name)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in e.details
    for raw in (
        pb.SegmentRequest(model=model.name, image=pb.Tensor(dtype=pb.UINT8, shape=[4, 4], axes="YX", data=b"\0" * 5)),
        pb.SegmentRequest(model=model.name),  # no image
        pb.SegmentRequest(model=model.name, image=to_tensor(np.zeros((8, 8), np.uint8), "YX"),
                          parameters=pb.SegmentParameters(norm_percentile_low=150.0)),
        pb.SegmentRequest(model=model.name, image=to_tensor(np.zeros((8, 8), np.uint8), "YX"),
                          parameters=pb.SegmentParameters(n_tiles=[0, 0])),
    ):
        with pytest.raises(grpc.RpcError) as info:
            service.client.stub.Segment(raw, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    _assert_serving(service)


def test_failed_precondition_for_corrupt_weights(service: ServiceProcess) -> None:
    models = _models(service.address, service)
    if CORRUPT_MODEL not in models:
        pytest.skip("the service has no project model to corrupt")
    img, axes = _image(models[CORRUPT_MODEL], (32, 32))
    e = _error(service, img, axes, CORRUPT_MODEL)
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION and "sha256" in e.details
    _assert_serving(service)


def test_resource_exhausted_out_of_memory_has_its_reason(service: ServiceProcess) -> None:
    model = _primary(service)
    side = int(np.sqrt(OOM_PIXELS)) + 8
    img, axes = _image(model, (8, 8))
    big = np.zeros((side, side) + img.shape[2:] if not axes.startswith("Z") else (1, side, side) + img.shape[3:], np.uint8)
    t0 = time.monotonic()
    e = _error(service, big, axes, model.name)
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.reason == "out_of_memory", (e.code, e.reason, e.details)
    assert time.monotonic() - t0 < 30, "an out-of-memory answer must not be retried by the channel"
    _assert_serving(service)


def test_resource_exhausted_over_the_message_limit(service: ServiceProcess) -> None:
    model = _primary(service)
    side = int(np.sqrt(MAX_MESSAGE_MB * 1024 * 1024 / 4)) + 64
    img, axes = _image(model, (8, 8))
    big = np.zeros((side, side) + img.shape[2:] if not axes.startswith("Z") else (1, side, side) + img.shape[3:], np.float32)
    req = pb.SegmentRequest(model=model.name, image=to_tensor(big, axes))
    with _raw_channel(service) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.SegmenterStub(channel).Segment(req, timeout=120)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_serving(service)


@pytest.mark.slow
def test_resource_exhausted_busy_when_queue_is_full(service: ServiceProcess) -> None:
    model = _primary(service)
    img, axes = _image(model, (768, 768), seed=9)
    req = pb.SegmentRequest(model=model.name, image=to_tensor(img, axes))
    with _raw_channel(service) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        stub.Segment(req, timeout=600)  # warm: the model is loaded
        futures = [stub.Segment.future(req, timeout=600) for _ in range(MAX_QUEUE + 4)]
        ok, busy = 0, 0
        for f in futures:
            try:
                f.result()
                ok += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert dict(exc.trailing_metadata() or ()).get("opsef-reason") == "busy"
                busy += 1
    assert ok >= 1 and busy >= 1, (ok, busy)
    _assert_serving(service)


@pytest.mark.slow
def test_deadline_and_cancellation(service: ServiceProcess) -> None:
    model = _primary(service)
    img, axes = _image(model, (768, 768), seed=10)
    req = pb.SegmentRequest(model=model.name, image=to_tensor(img, axes))
    with _raw_channel(service) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        warm = stub.Segment(req, timeout=600)
        predict_s = max(warm.timings.predict_s, 0.05)
        # a deadline shorter than the prediction
        with pytest.raises(grpc.RpcError) as info:
            stub.Segment(req, timeout=predict_s / 5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        stub.Segment(req, timeout=600)  # waits (queued) until the abandoned prediction has freed its slot
        # one request runs; the next waits in the queue past its deadline and is dropped there
        first = stub.Segment.future(req, timeout=600)
        second = stub.Segment.future(req, timeout=predict_s / 3)
        with pytest.raises(grpc.RpcError) as info:
            second.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert first.result().object_count == warm.object_count
        # a cancelled call
        third = stub.Segment.future(req, timeout=600)
        assert third.cancel() or third.done()
        with pytest.raises((grpc.FutureCancelledError, grpc.RpcError)):
            third.result()
        # the service goes on serving
        assert stub.Segment(req, timeout=600).object_count == warm.object_count
    _assert_serving(service)


# ---------------------------------------------------------------------------- device and start-up
@pytest.mark.slow
def test_unavailable_device_is_refused_at_start(service: ServiceProcess, tmp_path: Path) -> None:
    cmd, env = serve_command(service.service_dir, ["--port", "0", "--port-file", str(tmp_path / "port"),
                                                   "--device", "cuda:99", "--cache-dir", str(tmp_path / "cache")])
    log = tmp_path / "log.txt"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (tmp_path / "port").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    started = proc.poll() is None
    if started:
        proc.terminate()
        proc.wait(30)
    output = log.read_text(errors="replace")
    assert not started, f"the service started although --device cuda:99 does not exist:\n{output[-2000:]}"
    assert proc.returncode != 0 and "cuda:99" in output, output[-3000:]


# ---------------------------------------------------------------------------- reference outputs
def test_reference_outputs(service: ServiceProcess, request: pytest.FixtureRequest) -> None:
    """Each project model still gives its stored results on the fixed input set (see reference.py)."""
    from opsef_orchestrator.paths import services_root

    from tests.conformance import reference

    info = service.client.info()
    models = [m for m in _models(service.address, service).values()
              if m.name != CORRUPT_MODEL and m.source != "published" and m.weights_present and 2 in m.dims]
    if not models:
        pytest.skip(f"service {service.name} has no 2D project model with weights")
    update = request.config.getoption("--update-reference", default=False)
    shipped = service.service_dir.parent == services_root()
    problems, missing = [], []
    for model in models:
        path = reference.REFERENCE_DIR / f"{service.name}__{model.name}.json"
        results, labels = reference.compute(lambda img, ax, m: _call(service, img, ax, m), model.name, list(model.axes))
        if update:
            header = {"service": service.name, "model": model.name, "model_version": model.version,
                      "weights_sha256": model.weights_sha256, "framework": f"{info.framework} {info.framework_version}",
                      "device": info.device, "cpu_threads": info.cpu_threads}
            reference.save(path, header, results, labels)
            continue
        if not path.is_file():
            missing.append(path.name)
            continue
        doc, stored = reference.load(path)
        problems += [f"{model.name}: {p}" for p in reference.compare(doc, stored, results, labels)]
    if update:
        pytest.skip(f"reference outputs written for {[m.name for m in models]}")
    if missing:
        msg = (f"no reference outputs {missing} in {reference.REFERENCE_DIR}; generate them with "
               f"`.venv/bin/python -m pytest tests/conformance -k reference --update-reference --service-dir {service.service_dir}`")
        if shipped:
            pytest.fail(msg)
        pytest.skip(msg)
    assert not problems, "results changed beyond the tolerance:\n" + "\n".join(problems)


def test_zz_nothing_written_to_home(service: ServiceProcess) -> None:
    """Runs last for each service: after all the above, its read-only HOME is still empty."""
    if not service.home_read_only:
        pytest.skip("cannot make HOME read-only here (needs root for mount --bind -o ro)")
    model = _primary(service)
    img, axes = _image(model, (64, 64))
    _call(service, img, axes, model.name)
    written = [str(p.relative_to(service.home)) for p in service.home.rglob("*")]
    assert not written, f"service wrote into HOME: {written}"
    assert "Read-only file system" not in service.log_tail(10_000)
    assert service.cache_dir.is_dir()
    _assert_serving(service)
