"""Per-pool autoscaling: KEDA ScaledObjects or HPAs that scale each pool on its saturation."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
from crd_validation import crd_errors
from deploy_support import NAMESPACE, RELEASE, Render, find, one

FULL = f"{RELEASE}-splitserve"


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def test_autoscaling_is_off_by_default_and_pools_keep_fixed_replicas(render: Render) -> None:
    docs = render({"decode": {"replicas": 3}})
    assert find(docs, "ScaledObject") == [] and find(docs, "HorizontalPodAutoscaler") == []
    assert workloads(docs)[f"{FULL}-decode"]["spec"]["replicas"] == 3


def test_keda_scales_each_pool_on_its_own_saturation_query(render: Render) -> None:
    values = {"autoscaling": {"mode": "keda", "decode": {"minReplicas": 2, "maxReplicas": 12, "targetSaturation": 0.7},
                              "keda": {"serverAddress": "http://prom.monitoring:9090"}}}  # fmt: skip
    docs = render(values)
    for role, (low, high, threshold) in {"prefill": (1, 4, "0.8"), "decode": (2, 12, "0.7")}.items():
        scaled = one(docs, "ScaledObject", f"{FULL}-{role}")
        assert crd_errors(scaled) == []
        spec = scaled["spec"]
        target = workloads(docs)[spec["scaleTargetRef"]["name"]]
        assert target["metadata"]["labels"]["app.kubernetes.io/component"] == role
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (low, high)
        (trigger,) = spec["triggers"]
        assert (trigger["type"], trigger["metricType"]) == ("prometheus", "Value")
        assert trigger["metadata"]["threshold"] == threshold
        assert trigger["metadata"]["serverAddress"] == "http://prom.monitoring:9090"
        query = trigger["metadata"]["query"]
        assert query.startswith("max(splitserve_router_pool_saturation_ratio{")
        assert f'role="{role}"' in query and f'namespace="{NAMESPACE}"' in query
        assert f'pod=~"{FULL}-router-.+"' in query
        # an autoscaled Deployment leaves replicas to the autoscaler (helm upgrade must not reset it)
        assert "replicas" not in target["spec"]


def test_hpa_scales_each_pool_on_the_external_saturation_metric(render: Render) -> None:
    docs = render({"autoscaling": {"mode": "hpa", "prefill": {"minReplicas": 1, "maxReplicas": 3,
                                                                "targetSaturation": 1.25}}})  # fmt: skip
    for role, value in (("prefill", "1250m"), ("decode", "800m")):
        hpa = one(docs, "HorizontalPodAutoscaler", f"{FULL}-{role}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{FULL}-{role}"}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"] == {
            "name": "splitserve_router_pool_saturation_ratio",
            "selector": {"matchLabels": {"role": role}},
        }
        assert metric["external"]["target"] == {"type": "Value", "value": value}
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert find(docs, "ScaledObject") == []


def test_a_custom_series_selector_replaces_the_default_one(render: Render) -> None:
    docs = render({"autoscaling": {"mode": "keda", "seriesSelector": 'job="router"'}})
    query = one(docs, "ScaledObject", f"{FULL}-decode")["spec"]["triggers"][0]["metadata"]["query"]
    assert query == 'max(splitserve_router_pool_saturation_ratio{role="decode",job="router"})'


def test_the_vendored_keda_schema_rejects_a_malformed_scaled_object(render: Render) -> None:
    scaled = one(render({"autoscaling": {"mode": "keda"}}), "ScaledObject", f"{FULL}-prefill")
    scaled["spec"]["triggers"][0].pop("type")
    scaled["spec"]["minReplicas"] = 1  # HPA spelling, not KEDA's
    errors = crd_errors(scaled)
    assert any("'type' is a required property" in e for e in errors), errors
    assert any("minReplicas" in e for e in errors), errors


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"autoscaling": {"mode": "vpa"}}, "/autoscaling/mode"),
        (
            {"autoscaling": {"decode": {"minReplicas": 0, "maxReplicas": 2, "targetSaturation": 0.8}}},
            "/autoscaling/decode/minReplicas",
        ),
        (
            {"autoscaling": {"prefill": {"minReplicas": 1, "maxReplicas": 2, "targetSaturation": 0}}},
            "/autoscaling/prefill/targetSaturation",
        ),
        ({"autoscaling": {"keda": {"serverAddress": "prometheus:9090"}}}, "/autoscaling/keda/serverAddress"),
        ({"autoscaling": {"seriesSelector": "job=router"}}, "/autoscaling/seriesSelector"),
    ],
)
def test_bad_autoscaling_values_are_rejected_by_the_schema(chart: Any, values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as rejected:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert fragment in str(rejected.value)


def test_max_replicas_below_min_replicas_fails_with_a_clear_message(chart: Any) -> None:
    values = {"autoscaling": {"mode": "hpa", "decode": {"minReplicas": 4, "maxReplicas": 2, "targetSaturation": 0.8}}}
    with pytest.raises(helm_python.HelmError) as failed:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "autoscaling.decode.maxReplicas (2) is below minReplicas (4)" in str(failed.value)
