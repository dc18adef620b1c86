"""The chart can run Mooncake Store instead of our KV store, selected by `mooncake.enabled`."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
from deploy_support import CHART_DIR, NAMESPACE, RELEASE, Render, arg_value, find, pod_templates

from kvstore.mooncake_url import MooncakeURL

KUBE_VERSION = "1.33.0"
FULL = f"{RELEASE}-splitserve"
HA = {"enabled": True, "replicas": 3, "etcdEndpoints": "etcd-0.etcd:2379,etcd-1.etcd:2379"}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "mooncake": {"mooncake": {"enabled": True}},
    "mooncake-ha-rdma": {"mooncake": {"enabled": True, "protocol": "rdma", "rdmaDevices": "mlx5_0", "replicas": 2,
                                      "master": {"ha": HA}, "nodes": {"replicas": 4, "segmentGiB": 64}}},
}  # fmt: skip


def container(docs: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    return pod_templates(docs)[workload]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str:
    """Value of a --name=value argument (Mooncake's gflags style)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} in {args}"
    return values[0]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_mooncake_manifests_lint_and_validate_against_the_kubernetes_schema(render: Render, values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and report["messages"] == []
    for doc in render(values):
        if doc["kind"] in {"PodMonitor", "PrometheusRule", "HTTPRoute"}:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_mooncake_replaces_our_store_and_the_workers_get_its_url(render: Render) -> None:
    docs = render(VALUE_SETS["mooncake"])
    workloads = pod_templates(docs)
    assert f"{FULL}-mooncake-master" in workloads and f"{FULL}-mooncake-node" in workloads
    assert not any("kvstore" in name for name in workloads), "our store must not run beside Mooncake"
    for role in ("prefill", "decode"):
        url = MooncakeURL.parse(arg_value(container(docs, f"{FULL}-{role}")["args"], "--kvstore"))
        assert url.master == f"{FULL}-mooncake-master:50051" and url.protocol == "tcp"
    router_args = container(docs, f"{FULL}-router")["args"]
    assert "--kvstore-events" not in router_args  # Mooncake's master publishes no events of ours


def test_memory_nodes_request_their_segment_plus_overhead_and_join_the_master(render: Render) -> None:
    docs = render({"mooncake": {"enabled": True, "nodes": {"segmentGiB": 48, "memoryOverheadGiB": 3}}})
    node = container(docs, f"{FULL}-mooncake-node")
    assert node["command"] == ["mooncake_client"]
    assert flag(node["args"], "global_segment_size") == str(48 << 30)
    assert flag(node["args"], "master_server_address") == f"{FULL}-mooncake-master:50051"
    assert node["resources"]["requests"]["memory"] == node["resources"]["limits"]["memory"] == "51Gi"


def test_ha_masters_elect_a_leader_in_etcd_and_everyone_finds_it_there(render: Render) -> None:
    docs = render(VALUE_SETS["mooncake-ha-rdma"])
    master = find(docs, "Deployment", f"{FULL}-mooncake-master")[0]
    assert master["spec"]["replicas"] == 3
    args = master["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "enable_ha") == "true" and flag(args, "etcd_endpoints") == "etcd-0.etcd:2379;etcd-1.etcd:2379"
    assert flag(args, "rpc_address") == "$(POD_IP)"
    assert (
        flag(container(docs, f"{FULL}-mooncake-node")["args"], "master_server_address")
        == "etcd://etcd-0.etcd:2379;etcd-1.etcd:2379"
    )
    url = MooncakeURL.parse(arg_value(container(docs, f"{FULL}-decode")["args"], "--kvstore"))
    assert (url.master, url.protocol, url.device, url.replicas) == (
        "etcd://etcd-0.etcd:2379;etcd-1.etcd:2379",
        "rdma",
        "mlx5_0",
        2,
    )


def test_ha_without_etcd_endpoints_is_refused_with_the_reason(render: Render) -> None:
    with pytest.raises(Exception, match="etcdEndpoints"):
        render({"mooncake": {"enabled": True, "master": {"ha": {"enabled": True}}}})
