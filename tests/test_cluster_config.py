"""The cluster's configuration and names, without NATS: [nats] validation, --shard, subject tokens."""
from __future__ import annotations

import pytest

from heatsvc.cluster import subjects
from heatsvc.cluster.subjects import Shard
from heatsvc.config import parse


def nats(table: dict, env: dict | None = None):
    return parse({"nats": table}, env=env or {}).nats


def test_nats_section_defaults_and_values(tmp_path):
    assert nats({}).url == "nats://127.0.0.1:4222" and nats({}).token is None
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    n = nats({"url": "tls://nats.example:4222", "token_file": str(token), "heartbeat_s": 2})
    assert (n.url, n.token, n.heartbeat_s) == ("tls://nats.example:4222", "s3cret", 2.0)
    assert "s3cret" not in repr(n)
    assert nats({}, env={"HEATSVC_NATS_URL": "nats://10.0.0.1:4222"}).url == "nats://10.0.0.1:4222"


@pytest.mark.parametrize("table, message", [
    ({"url": "http://x:4222"}, "nats.url = 'http://x:4222' is invalid"),
    ({"token": "x"}, "nats.token does not belong in the config file"),
    ({"tls_cert": __file__}, "nats.tls_cert and nats.tls_key go together"),
    ({"credentials": "/no/such.creds"}, "nats.credentials = '/no/such.creds': no such file"),
    ({"heartbeat_s": 0}, "nats.heartbeat_s = 0.0 is invalid"),
    ({"urls": "nats://x:1"}, "unknown key(s) in [nats]: urls"),
])
def test_bad_nats_section_is_named(table, message):
    with pytest.raises(ValueError) as err:
        nats(table)
    assert message in str(err.value)


def test_shards_and_subjects():
    assert Shard.parse("1/3") == Shard(1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)
    owners = [i for i in range(4) if Shard(i, 4).owns("BTCUSDT")]
    assert len(owners) == 1   # every symbol has exactly one owner, its aggregate with it
    subject = subjects.view("all:1000PEPE.X", "1d", "grid")
    assert subject == "heatsvc.v1.all_3A1000PEPE_2EX.1d.grid"
    assert subjects.parse_view(subject) == ("all:1000PEPE.X", "1d", "grid")
    assert subjects.parse_view("heatsvc.v1.owners.0") is None and subjects.parse_owner("heatsvc.v1.owners.0") == 0
