"""Overload: bounded slots and queue answer RESOURCE_EXHAUSTED at once, clients retry, memory stays bounded, deadlines stop work.

Figures (p50/p95, peak RSS) are printed by ``python -m tests.reliability.load``;
these tests assert correctness only.
"""
from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import numpy as np
import pytest

from opsef_protocol.codec import to_tensor
from opsef_protocol.v1 import segmenter_pb2 as pb, segmenter_pb2_grpc as pb_grpc
from tests.reliability._support import STARTERS, service_skip_reason
from tests.reliability.load import LIMITED_ARGS, run_load

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: Growth of the service's resident memory allowed during the load (a leak of ~1 MiB per request would exceed it).
MAX_RSS_GROWTH_MIB = 300.0


@pytest.fixture(scope="module", params=["stardist", "unet", "cellpose"])
def limited(request: pytest.FixtureRequest, serve):
    """A service with one prediction slot and a queue of two."""
    reason = service_skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    s = serve(request.param, *LIMITED_ARGS)
    return request.param, s


def _raw_stub(address: str) -> tuple[grpc.Channel, pb_grpc.SegmenterStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.enable_retries", 0),  # see every refusal
                                                      ("grpc.max_receive_message_length", 64 << 20)])
    return channel, pb_grpc.SegmenterStub(channel)


def test_beyond_slots_and_queue_is_refused_at_once(limited) -> None:
    name, s = limited
    rng = np.random.default_rng(1)
    img = (rng.random((512, 512)) * 255).astype(np.uint8)
    req = pb.SegmentRequest(model=STARTERS[name], image=to_tensor(img, "YX"))
    channel, stub = _raw_stub(s.address)
    with channel:
        stub.Segment(req, timeout=300)  # warm-up: model loaded
        t0 = {}
        results: dict[int, tuple[str, float, str]] = {}

        def call(i: int) -> None:
            t0[i] = time.perf_counter()
            try:
                stub.Segment(req, timeout=300)
                results[i] = ("OK", time.perf_counter() - t0[i], "")
            except grpc.RpcError as exc:
                reason = dict(exc.trailing_metadata() or ()).get("opsef-reason", "")
                results[i] = (exc.code().name, time.perf_counter() - t0[i], reason)

        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(call, range(8)))
    ok = [r for r in results.values() if r[0] == "OK"]
    refused = [r for r in results.values() if r[0] == "RESOURCE_EXHAUSTED"]
    assert len(ok) + len(refused) == 8, results
    assert len(ok) >= 3 and len(refused) >= 1, results  # 1 running + 2 queued at most at once
    assert all(r[2] == "busy" for r in refused)
    # refusals come back without waiting for a prediction: faster than the fastest served request
    assert max(r[1] for r in refused) < min(r[1] for r in ok), results


def test_concurrent_clients_with_retries_lose_nothing_and_memory_stays_bounded(limited) -> None:
    name, s = limited
    res = run_load(name, s.address, STARTERS[name], s.proc.pid, log=s.log, clients=8, requests=50)
    assert not res.failures, res.failures[:5]
    assert len(res.latencies_s) == 400
    assert res.refused > 0  # the queue really was full; every refusal was retried to success
    assert res.rss_peak_mib - res.rss_before_mib < MAX_RSS_GROWTH_MIB, res
    assert s.proc.poll() is None


def _holder_side(stub: pb_grpc.SegmenterStub, model: str, seconds: float) -> int:
    """Side of a square image whose prediction takes about ``seconds`` on this machine (calibrated at 1024x1024)."""
    probe = (np.random.default_rng(3).random((1024, 1024)) * 255).astype(np.uint8)
    took = stub.Segment(pb.SegmentRequest(model=model, image=to_tensor(probe, "YX")), timeout=300).timings.predict_s
    side = int(1024 * np.sqrt(seconds / max(took, 1e-3)))
    return int(np.clip(side, 1024, 3072)) // 16 * 16


def test_deadline_passed_while_queued_is_never_predicted(limited) -> None:
    name, s = limited
    channel, stub = _raw_stub(s.address)
    with channel:
        # the slot holder must still be predicting when the probe's deadline passes, on a fast machine too
        side = _holder_side(stub, STARTERS[name], seconds=3.0)
        big = (np.random.default_rng(2).random((side, side)) * 255).astype(np.uint8)
        small = np.zeros((64, 64), np.uint8)
        t_sent = time.perf_counter()
        busy = stub.Segment.future(pb.SegmentRequest(model=STARTERS[name], image=to_tensor(big, "YX"),
                                                     request_id="slot-holder"), timeout=300)
        time.sleep(0.3)  # the slot holder is decoded and predicting now
        with pytest.raises(grpc.RpcError) as info:
            stub.Segment(pb.SegmentRequest(model=STARTERS[name], image=to_tensor(small, "YX"), request_id="deadline-probe"),
                         timeout=0.3)
        t_expired = time.perf_counter() - t_sent
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        held = busy.result()
        # the holder released its slot no earlier than decode + predict after it was sent
        held_until = held.timings.decode_s + held.timings.queue_s + held.timings.predict_s
        assert held_until > t_expired + 0.2, (
            f"the slot holder ({side}x{side}) finished {held_until:.2f} s after sending, "
            f"too close to the probe's deadline ({t_expired:.2f} s); the test cannot tell queued from predicted")
        time.sleep(0.5)
    log = s.log_text()
    assert "request deadline-probe cancelled or past its deadline before prediction" in log
    assert "request deadline-probe model" not in log  # never predicted
    assert "request slot-holder model" in log
