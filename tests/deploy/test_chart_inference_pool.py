"""Gateway API Inference Extension: InferencePool over the decode pool, the router as endpoint picker."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
from crd_validation import crd_errors
from deploy_support import NAMESPACE, RELEASE, Render, arg_value, find, one, pod_templates

FULL = f"{RELEASE}-splitserve"
ENABLED = {"inferencePool": {"enabled": True}}


def test_no_gateway_inference_objects_by_default(render: Render) -> None:
    docs = render()
    assert find(docs, "InferencePool") == [] and find(docs, "InferenceObjective") == []
    assert "--ext-proc-port" not in pod_templates(docs)[f"{FULL}-router"]["spec"]["containers"][0]["args"]


def test_inference_pool_selects_exactly_the_decode_pods_and_targets_their_serving_port(render: Render) -> None:
    docs = render(ENABLED)
    pool = one(docs, "InferencePool", FULL)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert crd_errors(pool) == []
    selector = pool["spec"]["selector"]["matchLabels"]
    selected = [n for n, t in pod_templates(docs).items() if selector.items() <= t["metadata"]["labels"].items()]
    assert selected == [f"{FULL}-decode"]
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]  # default: the pod router's port
    pool = one(render({"inferencePool": {"enabled": True, "targetPort": 8080}}), "InferencePool", FULL)
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]


def test_the_endpoint_picker_reference_reaches_the_routers_ext_proc_port(render: Render) -> None:
    docs = render(
        {"inferencePool": {"enabled": True, "targetPort": 8080, "endpointPicker": {"port": 9102, "failureMode": "FailOpen"}}}
    )
    ref = one(docs, "InferencePool", FULL)["spec"]["endpointPickerRef"]
    # GAIE's CEL rule (not evaluated by the schema check): a Service reference needs a port
    assert ref["kind"] == "Service" and "port" in ref
    assert ref["failureMode"] == "FailOpen"
    service = one(docs, "Service", ref["name"])
    (port,) = service["spec"]["ports"]
    assert port["port"] == ref["port"]["number"] == 9102
    router = pod_templates(docs)[f"{FULL}-router"]
    assert service["spec"]["selector"].items() <= router["metadata"]["labels"].items()
    container = router["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == 9102
    assert arg_value(container["args"], "--ext-proc-port") == "9102"
    # the picker answers with decode pods on the pool's target port
    assert arg_value(container["args"], "--ext-proc-target-port") == "8080"


def test_each_decode_pod_serves_the_openai_api_on_the_target_port_over_its_own_worker(render: Render) -> None:
    docs = render({"inferencePool": {"enabled": True, "targetPort": 8080},
                   "router": {"apiKeySecret": {"name": "api", "key": "k"}}})  # fmt: skip
    decode = pod_templates(docs)[f"{FULL}-decode"]["spec"]
    worker, router = decode["containers"]
    assert worker["name"] == "decode" and router["name"] == "router"
    assert router["args"][0] == "router"
    assert arg_value(router["args"], "--decode") == f"127.0.0.1:{arg_value(worker['args'], '--port')}"
    assert arg_value(router["args"], "--port") == "8080"
    assert router["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert arg_value(router["args"], "--api-key") == "$(SPLITSERVE_API_KEY)"  # the same key as the central routers
    assert router["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in router["volumeMounts"]} >= {"/models", "/tmp", "/cache"}
    assert router["lifecycle"]["preStop"] == worker["lifecycle"]["preStop"]
    assert len(pod_templates(docs)[f"{FULL}-prefill"]["spec"]["containers"]) == 1
    off = render({"inferencePool": {"enabled": True, "podRouter": {"enabled": False}}})
    assert len(pod_templates(off)[f"{FULL}-decode"]["spec"]["containers"]) == 1
    assert len(pod_templates(render())[f"{FULL}-decode"]["spec"]["containers"]) == 1


def test_objectives_and_route_point_at_the_pool(render: Render) -> None:
    values = {
        "inferencePool": {
            "enabled": True,
            "objectives": [{"name": "premium", "priority": 10}, {"name": "batch"}],
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "hostnames": ["llm.example"]},
        }
    }
    docs = render(values)
    objectives = {o["metadata"]["name"]: o for o in find(docs, "InferenceObjective")}
    assert set(objectives) == {"premium", "batch"}
    for objective in objectives.values():
        assert objective["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
        assert crd_errors(objective) == []
        assert objective["spec"]["poolRef"] == {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": FULL}
    assert objectives["premium"]["spec"]["priority"] == 10 and "priority" not in objectives["batch"]["spec"]
    route = one(docs, "HTTPRoute", f"{FULL}-pool")
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": FULL}
    ]
    assert route["spec"]["parentRefs"] == [{"name": "gw"}] and route["spec"]["hostnames"] == ["llm.example"]


def test_the_gateway_may_reach_the_picker_and_the_target_port_only(render: Render) -> None:
    gateway = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]
    docs = render({"inferencePool": {"enabled": True, "targetPort": 8080, "gatewayFrom": gateway}})
    policy = one(docs, "NetworkPolicy", f"{FULL}-gateway")["spec"]
    assert policy["ingress"] == [
        {"ports": [{"port": 9002, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}], "from": gateway}
    ]
    assert policy["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["router", "decode"]}
    ]


def test_the_vendored_gaie_schemas_reject_malformed_objects(render: Render) -> None:
    docs = render({"inferencePool": {"enabled": True, "objectives": [{"name": "x"}]}})
    pool = one(docs, "InferencePool", FULL)
    pool["spec"]["extensionRef"] = pool["spec"].pop("endpointPickerRef")  # the pre-v1 spelling
    pool["spec"]["targetPorts"].append({"number": 9000})
    errors = crd_errors(pool)
    assert any("'endpointPickerRef' is a required property" in e for e in errors), errors
    assert any("targetPorts" in e for e in errors), errors  # at most one port in v1
    objective = one(docs, "InferenceObjective", "x")
    objective["spec"]["poolRef"]["name"] = ""
    assert any("poolRef/name" in e for e in crd_errors(objective))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"inferencePool": {"endpointPicker": {"failureMode": "Retry"}}}, "/inferencePool/endpointPicker/failureMode"),
        ({"inferencePool": {"objectives": [{"priority": 1}]}}, "/inferencePool/objectives/0"),
        ({"inferencePool": {"objectives": [{"name": "Not_A_Name"}]}}, "/inferencePool/objectives/0/name"),
        ({"inferencePool": {"httpRoute": {"enabled": True}}}, "/inferencePool/httpRoute/parentRefs"),
        ({"inferencePool": {"targetPort": 70000}}, "/inferencePool/targetPort"),
    ],
)
def test_bad_inference_pool_values_are_rejected_by_the_schema(chart: Any, values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as rejected:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert fragment in str(rejected.value)
