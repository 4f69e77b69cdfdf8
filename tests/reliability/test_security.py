"""Security: loopback by default, TLS and mutual TLS, the shared token, weights verified before loading, no pickle.

The TLS services here are real StarDist services started on a temporary
models folder that also holds a corrupt, an incomplete and an escaping copy of
the starter model.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest

from opsef_orchestrator.client import SegmentError, SegmenterClient
from opsef_orchestrator.paths import repo_root
from tests.reliability._support import STARTERS, copy_model

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

STARTER = STARTERS["stardist"]
IMG = np.zeros((48, 48), np.uint8)
TOKEN = "s3cret-token-for-tests"


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


def test_services_bind_loopback_only(stardist: SegmenterClient) -> None:
    port = int(stardist.target.rsplit(":", 1)[1])
    addrs = _listening(port)
    assert addrs, f"nothing listens on {port}"
    # 127.0.0.1 only (IPv4, or IPv4-mapped on a dual-stack socket): not 0.0.0.0, not ::
    assert set(addrs) <= {"0100007F", "0000000000000000FFFF00000100007F"}, addrs
    # and it is not reachable on another address of this host
    others = {a for a in socket.gethostbyname_ex(socket.gethostname())[2] if not a.startswith("127.")}
    for ip in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, port)) != 0, f"service reachable on {ip}:{port}"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The starter, a corrupt copy, a copy missing a weight file, a folder escaping by symlink, a broken manifest."""
    src = repo_root() / "services" / "stardist" / "models" / STARTER
    d = tmp_path_factory.mktemp("models")
    copy_model(src, d, STARTER)
    bad = copy_model(src, d, "corrupt_weights")
    weights = bad / "weights_best.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    (copy_model(src, d, "missing_weights") / "weights_best.h5").unlink()
    outside = tmp_path_factory.mktemp("outside")
    copy_model(src, outside, "escaping")
    (d / "escaping").symlink_to(outside / "escaping", target_is_directory=True)
    (d / "broken_manifest").mkdir()
    (d / "broken_manifest" / "manifest.yaml").write_text("name: broken_manifest\nversion: [unclosed\n")
    return d


@pytest.fixture(scope="module")
def tls_service(serve, certs: Path, models_dir: Path):
    """Server-authenticated TLS, no token, on the temporary models folder."""
    return serve("stardist", "--models-dir", str(models_dir), "--tls-cert", str(certs / "server.crt"),
                 "--tls-key", str(certs / "server.key"))


@pytest.fixture(scope="module")
def mtls_service(serve, certs: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Mutual TLS (client certificates from the test CA) and a shared token."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    return serve("stardist", "--models-dir", str(models_dir), "--tls-cert", str(certs / "server.crt"),
                 "--tls-key", str(certs / "server.key"), "--tls-client-ca", str(certs / "ca.crt"),
                 "--token-file", str(token_file))


def _fails_to_connect(client: SegmenterClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.health_status(timeout=5)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_tls_server_authentication(tls_service, certs: Path) -> None:
    with SegmenterClient(tls_service.address, tls_ca=certs / "ca.crt", attempts=1) as c:
        c.wait_serving(120)
        assert c.segment(IMG, "YX", STARTER).labels.shape == IMG.shape
    with SegmenterClient(tls_service.address, attempts=1) as plain:  # plaintext to a TLS port
        _fails_to_connect(plain)
    with SegmenterClient(tls_service.address, tls_ca=certs / "other-ca.crt", attempts=1) as wrong_ca:  # untrusted server
        _fails_to_connect(wrong_ca)
    assert tls_service.proc.poll() is None


def test_mutual_tls_and_token(mtls_service, certs: Path) -> None:
    client_cert = {"tls_ca": certs / "ca.crt", "tls_cert": certs / "client.crt", "tls_key": certs / "client.key"}
    with SegmenterClient(mtls_service.address, token=TOKEN, attempts=1, **client_cert) as c:
        c.wait_serving(120)
        assert c.segment(IMG, "YX", STARTER).labels.shape == IMG.shape
        assert STARTER in [m.name for m in c.models()]
    # no client certificate, or one from a CA the server does not trust: the handshake fails
    with SegmenterClient(mtls_service.address, token=TOKEN, tls_ca=certs / "ca.crt", attempts=1) as no_cert:
        _fails_to_connect(no_cert)
    with SegmenterClient(mtls_service.address, token=TOKEN, tls_ca=certs / "ca.crt", tls_cert=certs / "rogue.crt",
                         tls_key=certs / "rogue.key", attempts=1) as rogue:
        _fails_to_connect(rogue)
    # a valid certificate but no or a wrong token: UNAUTHENTICATED on every Segmenter call; health stays open
    for token in (None, "wrong"):
        with SegmenterClient(mtls_service.address, token=token, attempts=1, **client_cert) as c:
            assert c.health_status() == "SERVING"
            with pytest.raises(SegmentError) as info:
                c.segment(IMG, "YX", STARTER)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and "token" in info.value.details
            for call in (c.info, c.models):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in mtls_service.log_text()


def test_weights_verified_before_loading(tls_service, certs: Path) -> None:
    with SegmenterClient(tls_service.address, tls_ca=certs / "ca.crt", attempts=1) as c:
        c.wait_serving(120)
        listed = {m.name: m for m in c.models()}
        assert "broken_manifest" not in listed  # skipped with a warning, the service still runs
        assert not listed["missing_weights"].weights_present
        with pytest.raises(SegmentError) as info:
            c.segment(IMG, "YX", "corrupt_weights")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "weights_best.h5" in info.value.details and "sha256" in info.value.details and "corrupt" in info.value.details
        with pytest.raises(SegmentError) as info:
            c.segment(IMG, "YX", "missing_weights")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "missing" in info.value.details
        assert "weights_best.h5" in info.value.details
        with pytest.raises(SegmentError) as info:
            c.segment(IMG, "YX", "escaping")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "outside the models directory" in info.value.details
        assert c.health_status() == "SERVING"
        assert c.segment(IMG, "YX", STARTER).labels.shape == IMG.shape  # the good copy still works
    log = tls_service.log_text()
    assert "loaded model corrupt_weights" not in log and "loaded model missing_weights" not in log
    assert "loaded model escaping" not in log
    assert "broken_manifest" in log  # the skipped folder is named in the log


# -- no pickle, no code from requests or configurations ------------------------------------------
_FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|shelve|marshal|joblib)\b", re.M), "pickle-like module"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"yaml\.(unsafe_load|full_load)\(|yaml\.load\((?!.*Loader=_LimitedLoader)"), "non-safe YAML loader"),
    (re.compile(r"(?<![\w.])(eval|exec)\("), "eval/exec"),
    (re.compile(r"torch\.load\((?!.*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
]


def test_no_pickle_or_code_execution_in_sources() -> None:
    roots = [repo_root() / "protos" / "src", repo_root() / "orchestrator" / "src"]
    roots += [d / "src" for d in (repo_root() / "services").iterdir() if (d / "src").is_dir()]
    files = [p for r in roots for p in r.rglob("*.py") if "_pb2" not in p.name]
    assert len(files) > 30
    problems = []
    for f in files:
        text = f.read_text()
        for pattern, what in _FORBIDDEN:
            for m in pattern.finditer(text):
                problems.append(f"{f.relative_to(repo_root())}:{text[:m.start()].count(chr(10)) + 1}: {what}")
    assert not problems, "\n".join(problems)
