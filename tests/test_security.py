"""Security of the gRPC port against a real server on 127.0.0.1: TLS and mutual TLS with trustme
certificates, bearer tokens on every RPC but health, per-token stream limits, secrets kept out of
messages and logs, config errors that name the key, the exposure warning and the CLI's TLS options."""
from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_service import START, Stack, config_for, error_of, small_datasets, view

from heatsvc import cli
from heatsvc.config import parse, with_overrides
from heatsvc.replay import ReplayExchange
from heatsvc.service import auth
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

ALICE, BOB = "alice-Zq8Tf3kP0wLm2Xv", "bob-Hn5Rc7Yd1Gs9Ju4"
WRONG = "wrong-Kx2Vb6Np8Qe3Tt7"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A server CA and certificate for 127.0.0.1, and a separate CA for client certificates."""
    d = tmp_path_factory.mktemp("pki")
    ca, client_ca = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1", "localhost"), client_ca.issue_cert("client@example.org")
    paths = SimpleNamespace(dir=d, ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key",
                            client_ca=d / "client-ca.pem", client_cert=d / "client.pem", client_key=d / "client.key")
    ca.cert_pem.write_to_path(paths.ca)
    server.private_key_pem.write_to_path(paths.key)
    server.cert_chain_pems[0].write_to_path(paths.cert)
    client_ca.cert_pem.write_to_path(paths.client_ca)
    client.private_key_pem.write_to_path(paths.client_key)
    client.cert_chain_pems[0].write_to_path(paths.client_cert)
    paths.ca_bytes = ca.cert_pem.bytes()
    paths.client_creds = grpc.ssl_channel_credentials(paths.ca_bytes, client.private_key_pem.bytes(),
                                                      client.cert_chain_pems[0].bytes())
    return paths


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# who may call\n\nalice:{ALICE}\n  bob:{BOB}  \n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def replay():
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as rx:
        yield rx


@pytest.fixture(scope="module")
def secure(replay, pki, token_file, tmp_path_factory):
    """Mutual TLS and two named tokens, at most 2 streams per token; data loaded."""
    s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3", credentials=pki.client_creds,
              max_streams_per_token=2,
              server={"tls_cert": str(pki.cert), "tls_key": str(pki.key), "tls_client_ca": str(pki.client_ca),
                      "token_file": str(token_file)})
    yield s
    s.close()


def wait_for(condition, what: str, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- TLS -----------------------------------------------------------------------------------------

def test_tls_round_trip_and_plaintext_refused(replay, pki, tmp_path):
    s = Stack(replay, tmp_path / "bars.sqlite3", start_refresher=False,
              credentials=grpc.ssl_channel_credentials(pki.ca_bytes),
              server={"tls_cert": str(pki.cert), "tls_key": str(pki.key)})
    try:
        markets = s.stub.ListMarkets(pb.ListMarketsRequest(), timeout=10).markets
        assert "binance:BTCUSDT" in {m.market for m in markets}
        with grpc.insecure_channel(s.target) as plain:
            err = error_of(pb_grpc.HeatmapServiceStub(plain).ListMarkets, pb.ListMarketsRequest(), timeout=5)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        untrusted = grpc.ssl_channel_credentials(trustme.CA().cert_pem.bytes())
        with grpc.secure_channel(s.target, untrusted) as other:
            err = error_of(pb_grpc.HeatmapServiceStub(other).ListMarkets, pb.ListMarketsRequest(), timeout=5)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()


def test_mutual_tls_needs_a_client_certificate(secure, pki):
    with grpc.secure_channel(secure.target, grpc.ssl_channel_credentials(pki.ca_bytes)) as no_cert:
        err = error_of(pb_grpc.HeatmapServiceStub(no_cert).ListMarkets, pb.ListMarketsRequest(), timeout=5,
                       metadata=bearer(ALICE))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    resp = secure.stub.GetZones(pb.GetZonesRequest(view=view()), timeout=30, metadata=bearer(ALICE))
    assert resp.zones.market == "binance:BTCUSDT" and resp.zones.v_max > 0


# ---- tokens --------------------------------------------------------------------------------------

def every_rpc(stub, md):
    """Each HeatmapService method, called (first message read) with metadata md."""
    return {
        "ListMarkets": lambda: stub.ListMarkets(pb.ListMarketsRequest(), timeout=10, metadata=md),
        "GetHeatmap": lambda: stub.GetHeatmap(pb.GetHeatmapRequest(view=view()), timeout=10, metadata=md),
        "GetZones": lambda: stub.GetZones(pb.GetZonesRequest(view=view()), timeout=10, metadata=md),
        "StreamHeatmap": lambda: next(stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view()), timeout=10,
                                                         metadata=md)),
        "StreamZones": lambda: next(stub.StreamZones(pb.StreamZonesRequest(views=[view()]), timeout=10,
                                                     metadata=md)),
    }


@pytest.mark.parametrize("md, words", [
    ([], "no bearer token"),
    (bearer(WRONG), "not valid"),
    ([("authorization", f"Basic {ALICE}")], "not a bearer token"),
    ([("authorization", f"Bearer {ALICE}x")], "not valid"),
])
def test_every_rpc_needs_a_valid_token(secure, md, words, caplog):
    caplog.set_level(logging.DEBUG)
    for name, call in every_rpc(secure.stub, md).items():
        err = error_of(call)
        assert err.code() == UNAUTHENTICATED, name
        assert words in err.details() and "authorization: Bearer TOKEN" in err.details(), name
        assert ALICE not in err.details() and WRONG not in err.details()
    assert "refused /heatsvc.v1.HeatmapService/StreamZones" in caplog.text
    for secret in (ALICE, BOB, WRONG):
        assert secret not in caplog.text
    assert secure.service.streams == 0


def test_a_corrupt_request_without_token_is_not_parsed(secure):
    call = secure.channel.unary_unary("/heatsvc.v1.HeatmapService/GetZones")
    assert error_of(call, b"\xff\xff\xff", timeout=10).code() == UNAUTHENTICATED
    assert error_of(call, b"\xff\xff\xff", timeout=10, metadata=bearer(BOB)).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_rpc_works_with_either_token(secure):
    for token in (ALICE, BOB):
        for name, call in every_rpc(secure.stub, bearer(token)).items():
            assert call() is not None, name


def test_health_is_open_and_reflection_is_not(secure):
    health = health_pb2_grpc.HealthStub(secure.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="binance:BTCUSDT"), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    stub = reflection_pb2_grpc.ServerReflectionStub(secure.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    err = error_of(lambda: next(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    assert err.code() == UNAUTHENTICATED
    resp = next(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=bearer(BOB)))
    assert "heatsvc.v1.HeatmapService" in {s.name for s in resp.list_services_response.service}


def test_streams_are_limited_per_token(secure, pki):
    counts = secure.service.caller_streams
    zones = pb.StreamZonesRequest(views=[view(lookback="12h")])
    heat = pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True)
    held = [secure.stub.StreamHeatmap(heat, timeout=60, metadata=bearer(ALICE)),
            secure.stub.StreamZones(zones, timeout=60, metadata=bearer(ALICE))]
    assert all(next(c).kind == pb.UPDATE_KIND_SNAPSHOT for c in held)
    assert counts["alice"] == 2
    for call in (lambda: next(secure.stub.StreamHeatmap(heat, timeout=10, metadata=bearer(ALICE))),
                 lambda: next(secure.stub.StreamZones(zones, timeout=10, metadata=bearer(ALICE)))):
        err = error_of(call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "token 'alice'" in err.details() and "limit of 2 streams" in err.details()
        assert ALICE not in err.details()
    # a refused or invalid stream holds nothing
    err = error_of(lambda: next(secure.stub.StreamZones(pb.StreamZonesRequest(), timeout=10, metadata=bearer(BOB))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and counts["bob"] == 0 and counts["alice"] == 2
    # bob is not affected by alice's limit; a stream dropped with its connection is released too
    bob_channel = grpc.secure_channel(secure.target, pki.client_creds)
    bobs = pb_grpc.HeatmapServiceStub(bob_channel).StreamHeatmap(heat, timeout=60, metadata=bearer(BOB))
    assert next(bobs).kind == pb.UPDATE_KIND_SNAPSHOT and counts["bob"] == 1
    bob_channel.close()
    wait_for(lambda: counts["bob"] == 0, "bob's stream to be released after its channel closed")
    # alice may open one again once she closes one
    held[0].cancel()
    wait_for(lambda: counts["alice"] == 1, "alice's cancelled stream to be released")
    again = secure.stub.StreamHeatmap(heat, timeout=60, metadata=bearer(ALICE))
    assert next(again).kind == pb.UPDATE_KIND_SNAPSHOT
    for c in (again, held[1]):
        c.cancel()
    wait_for(lambda: secure.service.streams == 0, "every stream to be released")
    assert counts["alice"] == counts["bob"] == 0


def test_shutdown_releases_every_token_stream(replay, tmp_path):
    s = Stack(replay, tmp_path / "bars.sqlite3", auth_token=BOB, max_streams_per_token=3)
    try:
        req = pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True)
        calls = [s.stub.StreamHeatmap(req, timeout=60, metadata=bearer(BOB)) for _ in range(3)]
        assert all(next(c).kind == pb.UPDATE_KIND_SNAPSHOT for c in calls)
        assert s.service.caller_streams[auth.ENV_TOKEN_NAME] == 3
        err = error_of(lambda: next(s.stub.StreamHeatmap(req, timeout=10, metadata=bearer(BOB))))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "'HEATSVC_AUTH_TOKEN'" in err.details()
        s.call(s.service.begin_shutdown())
        for c in calls:
            for _ in c:
                pass
            assert c.code() == grpc.StatusCode.OK
        wait_for(lambda: s.service.caller_streams[auth.ENV_TOKEN_NAME] == 0, "streams released at shutdown")
        assert s.service.streams == 0
    finally:
        s.close()


# ---- token files and configuration errors --------------------------------------------------------

def test_token_file_format():
    got = auth.parse_tokens(f"# comment\n\n{ALICE}\nbob:{BOB}\n   # indented comment\n", "f")
    assert got == {"line 3": ALICE, "bob": BOB}
    tokens = auth.Tokens(got)
    assert tokens.name_of(BOB) == "bob" and tokens.name_of(ALICE) == "line 3"
    assert tokens.name_of(WRONG) is None and tokens.name_of("") is None and len(tokens) == 2
    assert auth.bearer([("authorization", f"bearer  {BOB} ")]) == BOB
    assert auth.bearer([("authorization", BOB)]) == "" and auth.bearer([("x", "y")]) is None


@pytest.mark.parametrize("text, words", [
    (f"alice:{ALICE}\nbob:two words{BOB}\n", "line 2: expected TOKEN or NAME:TOKEN"),
    (f"al ice:{ALICE}\n", "line 1: expected"),
    (f"alice:{ALICE}:{BOB}\n", "line 1: expected"),
    ("alice:\n", "line 1: expected"),
    (f"alice:{ALICE}\nalice:{BOB}\n", "line 2: the name 'alice' is already used on line 1"),
    (f"alice:{ALICE}\n#\nbob:{ALICE}\n", "line 3: the same token as line 1"),
    ("# only a comment\n\n", "no token in the file"),
])
def test_bad_token_file_names_the_line_not_the_secret(text, words):
    with pytest.raises(ValueError, match=words) as info:
        auth.parse_tokens(text, "tokens")
    for secret in (ALICE, BOB):
        assert secret not in str(info.value)


def test_bad_token_file_in_serve_keeps_the_secret_out_of_stderr(tmp_path, capsys, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{ALICE}\nbob {BOB}\n")
    config = tmp_path / "heatsvc.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:0"\ntoken_file = "{tokens}"\n'
                      f'[data]\nstore = "{tmp_path / "bars.sqlite3"}"\n'
                      '[exchanges.okx]\nsymbols = ["BTCUSDT"]\nbase_url = "http://127.0.0.1:1/okx"\n')
    caplog.set_level(logging.DEBUG)
    assert cli.main(["serve", "--config", str(config), "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert f"token_file {tokens} line 2: expected TOKEN or NAME:TOKEN" in err
    for text in (out, err, caplog.text):
        assert ALICE not in text and BOB not in text


def test_secrets_are_not_accepted_in_the_config_file_nor_shown():
    with pytest.raises(ValueError, match=r"\[server\] auth_token is no longer accepted") as info:
        parse({"server": {"auth_token": ALICE}}, env={})
    assert ALICE not in str(info.value)
    config = parse({"server": {"token_file": "/tokens"}, "limits": {"max_streams_per_token": 7}},
                   env={"HEATSVC_AUTH_TOKEN": ALICE, "HEATSVC_TLS_CERT": "/c.pem", "HEATSVC_TLS_KEY": "/k.pem"})
    assert (config.auth_token, config.token_file, config.tls_cert, config.tls_key) == (ALICE, "/tokens", "/c.pem",
                                                                                       "/k.pem")
    assert config.limits.max_streams_per_token == 7 and parse({}, env={}).limits.max_streams_per_token == 100
    assert ALICE not in repr(config)
    env = parse({}, env={"HEATSVC_TOKEN_FILE": "/t", "HEATSVC_TLS_CLIENT_CA": "/ca.pem"})
    assert (env.token_file, env.tls_client_ca) == ("/t", "/ca.pem")
    with pytest.raises(ValueError, match="limits.max_streams_per_token"):
        parse({"limits": {"max_streams_per_token": 0}}, env={})
    with pytest.raises(ValueError, match="HEATSVC_AUTH_TOKEN: a token is printable ASCII") as info:
        auth.load_tokens(parse({}, env={"HEATSVC_AUTH_TOKEN": f"{ALICE} x"}))
    assert ALICE not in str(info.value)


def test_tls_config_errors_name_the_key_and_path(pki, tmp_path, replay):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    base = config_for(replay)
    cases = [
        ({"tls_cert": str(pki.cert)}, r"\[server\] tls_key is missing"),
        ({"tls_key": str(pki.key)}, r"\[server\] tls_cert is missing"),
        ({"tls_client_ca": str(pki.client_ca)}, r"\[server\] tls_cert is missing"),
        ({"tls_cert": str(missing), "tls_key": str(pki.key)}, rf"\[server\] tls_cert {missing}: cannot read"),
        ({"tls_cert": str(pki.cert), "tls_key": str(missing)}, rf"\[server\] tls_key {missing}: cannot read"),
        ({"tls_cert": str(garbage), "tls_key": str(pki.key)}, rf"\[server\] tls_cert {garbage}: not a PEM cert"),
        ({"tls_cert": str(pki.key), "tls_key": str(pki.key)}, r"\[server\] tls_cert .*: not a PEM certificate"),
        ({"tls_cert": str(pki.cert), "tls_key": str(garbage)}, rf"\[server\] tls_key {garbage}: not an unencrypted"),
        ({"tls_cert": str(pki.cert), "tls_key": str(pki.client_key)}, r"tls_key .*: does not match tls_cert"),
        ({"tls_cert": str(pki.cert), "tls_key": str(pki.key), "tls_client_ca": str(garbage)},
         rf"\[server\] tls_client_ca {garbage}: not a PEM certificate"),
        ({"tls_cert": str(pki.cert), "tls_key": str(pki.key), "tls_client_ca": str(missing)},
         rf"\[server\] tls_client_ca {missing}: cannot read"),
        ({"token_file": str(missing)}, rf"\[server\] token_file {missing}: cannot read"),
    ]
    for changes, words in cases:
        config = with_overrides(base, **changes)
        with pytest.raises(ValueError, match=words):
            auth.server_credentials(config)
            auth.load_tokens(config)
    assert auth.server_credentials(base) is None and auth.load_tokens(base) == {}
    ok = with_overrides(base, tls_cert=str(pki.cert), tls_key=str(pki.key), tls_client_ca=str(pki.client_ca))
    assert isinstance(auth.server_credentials(ok), grpc.ServerCredentials)


def test_world_readable_token_file_is_reported(tmp_path, caplog, replay):
    path = tmp_path / "tokens"
    path.write_text(f"{ALICE}\n")
    path.chmod(0o644)
    assert auth.load_tokens(with_overrides(config_for(replay), token_file=str(path))) == {"line 1": ALICE}
    assert "readable by every user" in caplog.text and ALICE not in caplog.text


# ---- exposure warning ----------------------------------------------------------------------------

@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:50051", True), ("127.3.4.5:1", True), ("localhost:1", True), ("[::1]:1", True),
    ("unix:/run/heatsvc.sock", True),
    ("0.0.0.0:1", False), ("[::]:1", False), ("10.1.2.3:1", False), (":50051", False), ("example.org:1", False),
    ("[2001:db8::1]:1", False),
])
def test_exposure_warning(address, loopback):
    assert auth.is_loopback(address) is loopback
    assert auth.exposure_warning(address, tls=True, tokens=True) is None
    both = auth.exposure_warning(address, tls=False, tokens=False)
    if loopback:
        assert both is None
        return
    assert address in both and "without TLS" in both and "without tokens" in both
    no_tls = auth.exposure_warning(address, tls=False, tokens=True)
    assert "tls_cert" in no_tls and "clear text" in no_tls and "tokens (" not in no_tls
    no_tokens = auth.exposure_warning(address, tls=True, tokens=False)
    assert "token_file" in no_tokens and "TLS (" not in no_tokens


# ---- the command-line client ---------------------------------------------------------------------

def test_cli_over_mutual_tls_with_a_token(secure, pki, tmp_path, monkeypatch, capsys):
    tls = ["--target", secure.target, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
           "--tls-key", str(pki.client_key)]
    monkeypatch.delenv("HEATSVC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("HEATSVC_TOKEN", raising=False)
    assert cli.main(["zones", *tls]) == 6
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("HEATSVC_TOKEN", ALICE)
    assert cli.main(["zones", *tls, "--top", "2"]) == 0
    assert "binance:BTCUSDT 1d zones" in capsys.readouterr().out
    monkeypatch.setenv("HEATSVC_TOKEN", WRONG)
    token_file = tmp_path / "token"
    token_file.write_text(f"# mine\n{BOB}\n")
    assert cli.main(["snapshot", *tls, "--token-file", str(token_file), "--rows", "40", "--columns", "12"]) == 0
    assert "40 rows x 12 columns" in capsys.readouterr().out
    assert cli.main(["zones", *tls[:4]]) == 4          # no client certificate: the handshake fails
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "mutual TLS also needs --tls-cert and --tls-key" in err
    assert cli.main(["zones", *tls[:6]]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    out = tmp_path / "served.png"
    assert cli.main(["render", *tls, "--token-file", str(token_file), "--rows", "40", "--columns", "12",
                     "--width", "400", "--height", "300", "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    assert cli.main(["render", *tls, "--rows", "40", "-o", str(tmp_path / "x.png")]) == 6   # WRONG token
    out, err = capsys.readouterr()
    assert "UNAUTHENTICATED" in err and WRONG not in out + err and BOB not in out + err
