"""The mooncake:// store URL: what it accepts and what it refuses, with errors a user can act on."""

from __future__ import annotations

import pytest

from kvstore.errors import InvalidRequest
from kvstore.mooncake_url import MooncakeURL


def test_a_plain_master_url_takes_the_defaults():
    url = MooncakeURL.parse("mooncake://10.0.0.5:50051")
    assert (url.master, url.metadata_server, url.protocol, url.replicas, url.segment) == (
        "10.0.0.5:50051",
        "P2PHANDSHAKE",
        "tcp",
        1,
        0,
    )


def test_options_reach_the_client_setup():
    url = MooncakeURL.parse(
        "mooncake://m:1?protocol=RDMA&device=mlx5_0&replicas=2&segment=4GiB&metadata=http://m:8080/metadata&host=10.1.1.1"
    )
    assert (url.protocol, url.device, url.replicas, url.segment) == ("rdma", "mlx5_0", 2, 4 << 30)
    assert url.metadata_server == "http://m:8080/metadata" and url.local_hostname() == "10.1.1.1"


def test_ha_masters_are_found_through_etcd():
    url = MooncakeURL.parse("mooncake:///?etcd=etcd-0:2379,etcd-1:2379")
    assert url.master == "etcd://etcd-0:2379;etcd-1:2379"
    assert url.endpoints() == ["etcd-0:2379", "etcd-1:2379"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mooncake://m", "must be HOST:PORT"),
        ("mooncake://m:1?protocol=ib", "protocol must be one of tcp, rdma"),
        ("mooncake://m:1?replica=2", "unknown option"),
        ("mooncake://m:1?replicas=0", "replicas must be >= 1"),
        ("mooncake://m:1?segment=lots", "not a size"),
        ("mooncake://m:1?etcd=e:2379", "not both"),
        ("grpc://m:1", "not a Mooncake store URL"),
    ],
)
def test_a_bad_url_is_refused_with_the_reason(url: str, message: str):
    with pytest.raises(InvalidRequest, match=message):
        MooncakeURL.parse(url)
