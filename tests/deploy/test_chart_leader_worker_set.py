"""Multi-node pools: a LeaderWorkerSet group per replica, one tensor-parallel engine across its pods."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
from crd_validation import crd_errors
from deploy_support import NAMESPACE, RELEASE, Render, arg_value, documented_flags, find, one, pod_templates

FULL = f"{RELEASE}-splitserve"
MULTI_NODE = {
    "decode": {"replicas": 3, "tensorParallelSize": 8, "leaderWorkerSet": {"enabled": True, "size": 2, "distPort": 29600}}
}


def container(template: dict[str, Any]) -> dict[str, Any]:
    return template["spec"]["containers"][0]


def env_names(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(template)["env"]}


def test_a_multi_node_pool_renders_a_leader_worker_set_instead_of_a_deployment(render: Render) -> None:
    docs = render(MULTI_NODE)
    assert [d["metadata"]["name"] for d in find(docs, "Deployment") if "decode" in d["metadata"]["name"]] == []
    group = one(docs, "LeaderWorkerSet", f"{FULL}-decode")
    assert group["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert crd_errors(group) == []
    spec = group["spec"]
    assert spec["replicas"] == 3
    assert spec["leaderWorkerTemplate"]["size"] == 2
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert find(docs, "Deployment", f"{FULL}-prefill")  # the other pool is unchanged


def test_the_leader_is_rank_0_and_the_other_pods_join_through_its_address(render: Render, interfaces_text: str) -> None:
    templates = pod_templates(render(MULTI_NODE))
    leader, ranks = container(templates[f"{FULL}-decode"]), container(templates[f"{FULL}-decode-ranks"])
    assert leader["args"][0] == "decode"
    assert arg_value(leader["args"], "--tensor-parallel-size") == "8"
    assert arg_value(leader["args"], "--nnodes") == "2"
    assert arg_value(leader["args"], "--dist-addr") == "$(LWS_LEADER_ADDRESS)"  # the group's headless-service name
    assert arg_value(leader["args"], "--dist-port") == "29600"
    assert {p["name"]: p["containerPort"] for p in leader["ports"]}.items() >= {"dist": 29600, "dist-plan": 29601}.items()
    assert ranks["args"][0] == "tp-ranks"
    for flag, value in (
        ("--dist-addr", "$(LWS_LEADER_ADDRESS)"),
        ("--dist-port", "29600"),
        ("--tensor-parallel-size", "8"),
        ("--nnodes", "2"),
        ("--node-rank", "$(LWS_WORKER_INDEX)"),
    ):
        assert arg_value(ranks["args"], flag) == value
    used = {a for a in ranks["args"][1:] if a.startswith("--")}
    assert used <= documented_flags(interfaces_text)["tp-ranks"]
    # GPUs per pod: the group's share; every pod gets the same group token
    for c in (leader, ranks):
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 4 == c["resources"]["limits"]["nvidia.com/gpu"]
    token = env_names(templates[f"{FULL}-decode"])["SPLITSERVE_RANK_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert env_names(templates[f"{FULL}-decode-ranks"])["SPLITSERVE_RANK_TOKEN"]["valueFrom"]["secretKeyRef"] == token
    assert token == {"name": f"{FULL}-rank-token", "key": "token"}


def test_only_leaders_serve_so_only_they_are_discovered_probed_and_pooled(render: Render) -> None:
    docs = render({**MULTI_NODE, "inferencePool": {"enabled": True}})
    templates = pod_templates(docs)
    leader, ranks = templates[f"{FULL}-decode"], templates[f"{FULL}-decode-ranks"]
    for selector in (
        one(docs, "Service", f"{FULL}-decode")["spec"]["selector"],
        one(docs, "InferencePool", FULL)["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= leader["metadata"]["labels"].items()
        assert not selector.items() <= ranks["metadata"]["labels"].items()
    assert "readinessProbe" in container(leader) and "readinessProbe" not in container(ranks)
    ranks_pdb = one(docs, "PodDisruptionBudget", f"{FULL}-decode-ranks")["spec"]["selector"]["matchLabels"]
    assert ranks_pdb.items() <= ranks["metadata"]["labels"].items()


def test_the_group_token_secret_is_created_unless_one_is_named(render: Render) -> None:
    secret = one(render(MULTI_NODE), "Secret", f"{FULL}-rank-token")
    assert len(secret["data"]["token"]) >= 48
    docs = render({**MULTI_NODE, "rankTokenSecret": {"name": "cluster-internal", "key": "rank"}})
    assert find(docs, "Secret", f"{FULL}-rank-token") == []
    ref = env_names(pod_templates(docs)[f"{FULL}-decode-ranks"])["SPLITSERVE_RANK_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "cluster-internal", "key": "rank"}
    assert find(render(), "Secret", f"{FULL}-rank-token") == []  # single-pod pools need no token


def test_the_internal_secret_reaches_every_container_and_doubles_as_the_group_token(render: Render) -> None:
    docs = render({**MULTI_NODE, "auth": {"internalSecret": {"name": "splitserve-internal", "key": "s"}}})
    assert find(docs, "Secret", f"{FULL}-rank-token") == []
    for name, template in pod_templates(docs).items():
        for c in template["spec"]["containers"]:
            ref = {e["name"]: e for e in c["env"]}["SPLITSERVE_INTERNAL_SECRET"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "splitserve-internal", "key": "s"}, name
    token = env_names(pod_templates(docs)[f"{FULL}-decode-ranks"])["SPLITSERVE_RANK_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "splitserve-internal", "key": "s"}
    assert all(
        "SPLITSERVE_INTERNAL_SECRET" not in {e["name"] for e in t["spec"]["containers"][0]["env"]}
        for t in pod_templates(render()).values()
    )


def test_autoscalers_scale_the_leader_worker_set(render: Render) -> None:
    docs = render({**MULTI_NODE, "autoscaling": {"mode": "hpa"}})
    target = one(docs, "HorizontalPodAutoscaler", f"{FULL}-decode")["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": f"{FULL}-decode"}
    assert "replicas" not in one(docs, "LeaderWorkerSet", f"{FULL}-decode")["spec"]


def test_the_vendored_schemas_check_the_group_and_its_pod_templates(render: Render) -> None:
    group = one(render(MULTI_NODE), "LeaderWorkerSet", f"{FULL}-decode")
    group["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Always"
    group["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["gpus"] = 4
    errors = crd_errors(group)
    assert any("restartPolicy" in e for e in errors), errors
    assert any("workerTemplate" in e and "gpus" in e for e in errors), errors


def test_a_tensor_parallel_size_that_does_not_split_evenly_over_the_pods_fails_clearly(chart: Any) -> None:
    values = {"prefill": {"tensorParallelSize": 6, "leaderWorkerSet": {"enabled": True, "size": 4}}}
    with pytest.raises(helm_python.HelmError) as failed:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "prefill.tensorParallelSize (6) must be a multiple of prefill.leaderWorkerSet.size (4" in str(failed.value)
    with pytest.raises(helm_python.HelmValuesError) as rejected:
        chart.render({"decode": {"leaderWorkerSet": {"size": 1}}}, name=RELEASE, namespace=NAMESPACE)
    assert "/decode/leaderWorkerSet/size" in str(rejected.value)
