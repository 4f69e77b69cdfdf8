"""Bad input straight at each service (raw gRPC, no client-side checks): a clear status naming the field, still SERVING.

Every case goes over the wire exactly as a hostile or buggy client would send
it; the answer must be the expected status code with a message naming the
image, axes, dtype, parameter or model, and the service must stay SERVING and
still segment a good image afterwards.
"""
from __future__ import annotations

from typing import Callable

import grpc
import numpy as np
import pytest

from opsef_protocol.codec import to_tensor
from opsef_protocol.v1 import segmenter_pb2 as pb

from tests.reliability._support import STARTERS, service_client

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVICES = ("stardist", "unet", "cellpose")


def _raw(dtype: int, shape: list[int], axes: str, nbytes: int) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, axes=axes, data=b"\0" * nbytes)


def _img(a: np.ndarray, axes: str) -> pb.Tensor:
    return to_tensor(a, axes)


GOOD = np.zeros((48, 48), np.uint8)

# id -> (request maker(model), expected code, words the message must contain)
CASES: dict[str, tuple[Callable[[str], pb.SegmentRequest], grpc.StatusCode, tuple[str, ...]]] = {
    "no-image": (lambda m: pb.SegmentRequest(model=m), INVALID, ("image",)),
    "1d-array": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [16], "X", 16)), INVALID, ("axes", "Y")),
    "5d-array": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((2, 2, 8, 8, 1), np.uint8), "TZYXC")),
                 INVALID, ("TZYXC",)),
    "6d-array": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [1, 1, 1, 1, 8, 8], "TZYXCQ", 64)),
                 INVALID, ("axes", "Q")),
    "empty-array": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((0, 8), np.uint8), "YX")), INVALID, ("empty",)),
    "empty-huge-dim": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [0, 2**40], "YX", 0)), INVALID, ("empty",)),
    "all-nan": (lambda m: pb.SegmentRequest(model=m, image=_img(np.full((16, 16), np.nan, np.float32), "YX")), INVALID, ("NaN",)),
    "inf": (lambda m: pb.SegmentRequest(model=m, image=_img(np.full((16, 16), np.inf, np.float64), "YX")), INVALID, ("infinite",)),
    "bool": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((16, 16), bool), "YX")), INVALID, ("dtype bool",)),
    "int64": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((16, 16), np.int64), "YX")), INVALID, ("dtype int64",)),
    "uint64": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((16, 16), np.uint64), "YX")), INVALID, ("dtype uint64",)),
    "unknown-dtype-enum": (lambda m: pb.SegmentRequest(model=m, image=_raw(99, [8, 8], "YX", 64)), INVALID, ("dtype 99",)),
    "unspecified-dtype": (lambda m: pb.SegmentRequest(model=m, image=_raw(0, [8, 8], "YX", 64)), INVALID, ("dtype",)),
    "bytes-short": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT16, [8, 8], "YX", 127)), INVALID,
                    ("127 bytes", "128")),
    "bytes-long": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.FLOAT32, [8, 8], "YX", 257)), INVALID, ("257 bytes",)),
    "shape-overflow": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [2**32, 2**32], "YX", 0)), INVALID,
                       ("0 bytes",)),
    "negative-dim": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [-1, 8], "YX", 0)), INVALID, ("negative",)),
    "axes-repeated": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [8, 8], "YY", 64)), INVALID, ("repeats",)),
    "axes-too-short": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [8, 8], "Y", 64)), INVALID, ("axes 'Y'",)),
    "axes-unknown-letter": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [8, 8], "AB", 64)), INVALID, ("axes",)),
    "axes-empty": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [8, 8], "", 64)), INVALID, ("axes",)),
    "axes-channels-first": (lambda m: pb.SegmentRequest(model=m, image=_raw(pb.UINT8, [3, 16, 16], "CYX", 768)), INVALID,
                            ("CYX", "accepts axes")),
    "too-many-channels": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((16, 16, 5), np.uint8), "YXC")), INVALID,
                          ("5 channels",)),
    "3d-to-2d-model": (lambda m: pb.SegmentRequest(model=m, image=_img(np.zeros((3, 32, 32), np.uint8), "ZYX")), INVALID,
                       ("ZYX", "accepts axes")),
    "unknown-model": (lambda m: pb.SegmentRequest(model="no_such_model", image=_img(GOOD, "YX")),
                      grpc.StatusCode.NOT_FOUND, ("no_such_model", "known models")),
    "model-dotdot": (lambda m: pb.SegmentRequest(model=f"../{m}", image=_img(GOOD, "YX")), INVALID, ("model name", "no paths")),
    "model-dotdot-only": (lambda m: pb.SegmentRequest(model="..", image=_img(GOOD, "YX")), INVALID, ("model name",)),
    "model-absolute": (lambda m: pb.SegmentRequest(model="/etc/passwd", image=_img(GOOD, "YX")), INVALID, ("model name",)),
    "model-subfolder": (lambda m: pb.SegmentRequest(model=f"{m}/weights", image=_img(GOOD, "YX")), INVALID, ("model name",)),
    "model-empty": (lambda m: pb.SegmentRequest(model="", image=_img(GOOD, "YX")), INVALID, ("model name",)),
    "model-nul": (lambda m: pb.SegmentRequest(model=m + "\0", image=_img(GOOD, "YX")), INVALID, ("model name",)),
    "scale-zero": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"), parameters=pb.SegmentParameters(scale=0)),
                   INVALID, ("'scale'",)),
    "scale-negative": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"), parameters=pb.SegmentParameters(scale=-2)),
                       INVALID, ("'scale'",)),
    "scale-absurd": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"), parameters=pb.SegmentParameters(scale=1e9)),
                     INVALID, ("'scale'",)),
    "tiles-zero": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"), parameters=pb.SegmentParameters(n_tiles=[0, 0])),
                   INVALID, ("'n_tiles'",)),
    "tiles-absurd": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                 parameters=pb.SegmentParameters(n_tiles=[100000, 1])), INVALID, ("'n_tiles'",)),
    "prob-threshold-above-1": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                           parameters=pb.SegmentParameters(prob_threshold=1.5)), INVALID,
                               ("'prob_threshold'",)),
    "nms-threshold-below-0": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                          parameters=pb.SegmentParameters(nms_threshold=-0.1)), INVALID,
                              ("'nms_threshold'",)),
    "threshold-nan": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                  parameters=pb.SegmentParameters(foreground_threshold=float("nan"))), INVALID,
                      ("'foreground_threshold'", "finite")),
    "min-size-negative": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                      parameters=pb.SegmentParameters(min_size=-5)), INVALID, ("'min_size'",)),
    "diameter-absurd": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                    parameters=pb.SegmentParameters(diameter=1e12)), INVALID, ("'diameter'",)),
    "channels-wrong": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"),
                                                   parameters=pb.SegmentParameters(channels=[7])), INVALID, ("'channels'",)),
    "percentiles-contradictory": (lambda m: pb.SegmentRequest(model=m, image=_img(GOOD, "YX"), parameters=pb.SegmentParameters(
        norm_percentile_low=90, norm_percentile_high=10)), INVALID, ("norm_percentile_low",)),
}

# Accepted on purpose (converted or padded by the server/adapter): the answer must be labels of the right shape.
ACCEPTED: dict[str, tuple[np.ndarray, str]] = {
    "float16": (np.linspace(0, 1, 40 * 40, dtype=np.float16).reshape(40, 40), "YX"),
    "rgba-to-grey-model": (np.zeros((40, 40, 4), np.uint8), "YXC"),
    "below-min-size-1x1": (np.full((1, 1), 7, np.uint16), "YX"),
    "below-min-size-3x70": (np.zeros((3, 70), np.float32), "YX"),
    "lowercase-axes": (np.zeros((24, 24), np.int16), "yx"),
}


@pytest.fixture(params=SERVICES)
def target(request: pytest.FixtureRequest):
    client = service_client(request, request.param)
    return client, STARTERS[request.param]


def _status(client, request: pb.SegmentRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Segment(request, timeout=60)
    return info.value


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_refused_naming_the_problem(target, case: str) -> None:
    client, model = target
    make, code, words = CASES[case]
    if case == "3d-to-2d-model" and 3 in {m.name: list(m.dims) for m in client.models()}[model]:
        pytest.skip(f"{model} is a 2D and 3D model")
    err = _status(client, make(model))
    assert err.code() == code, (case, err.code(), err.details())
    for w in words:
        assert w in err.details(), (case, err.details())
    assert "Traceback" not in err.details()
    assert client.health_status() == "SERVING"


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_odd_but_valid_input_gives_labels(target, case: str) -> None:
    client, model = target
    image, axes = ACCEPTED[case]
    tensor = to_tensor(image, axes.upper())
    tensor.axes = axes  # sent as given (e.g. lower case)
    resp = client.stub.Segment(pb.SegmentRequest(model=model, image=tensor), timeout=300)
    spatial = image.shape[:2]
    assert list(resp.labels.shape) == list(spatial) and resp.labels.dtype == pb.UINT32


def test_over_the_message_limit_is_refused_and_service_survives(serve) -> None:
    """A request above the service's message limit: RESOURCE_EXHAUSTED from gRPC itself, nothing decoded."""
    s = serve("stardist", "--max-message-mb", "1")
    from opsef_orchestrator.client import SegmentError, SegmenterClient

    with SegmenterClient(s.address, attempts=1, max_message_bytes=64 << 20) as c:
        c.wait_serving(120)
        assert c.info().max_message_bytes == 1 << 20
        with pytest.raises(SegmentError) as info:
            c.segment(np.zeros((1024, 1024), np.float32), "YX", STARTERS["stardist"])
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in info.value.details
        assert c.health_status() == "SERVING"
        assert c.segment(np.zeros((64, 64), np.uint8), "YX", STARTERS["stardist"]).labels.shape == (64, 64)
    assert s.proc.poll() is None


def test_service_still_segments_after_the_corpus(target) -> None:
    client, model = target
    from opsef_orchestrator.synthetic import synthetic_nuclei

    img, _ = synthetic_nuclei((96, 96), n=6, seed=1)
    res = client.segment(img, "YX", model)
    assert res.labels.shape == (96, 96) and res.object_count >= 1
