"""The Helm chart renders valid Kubernetes objects that run the documented entry points."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from crd_validation import crd_errors, is_vendored
from deploy_support import (
    ALERT_RULES,
    CHART_DIR,
    DASHBOARD_DIR,
    NAMESPACE,
    RELEASE,
    Render,
    arg_value,
    documented_flags,
    find,
    one,
    pod_templates,
)

KUBE_VERSION = "1.33.0"
CRD_KINDS = {"PodMonitor", "PrometheusRule", "HTTPRoute"}
FULL = f"{RELEASE}-splitserve"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tp2": {"prefill": {"tensorParallelSize": 2}, "decode": {"tensorParallelSize": 2, "replicas": 3}},
    "all-toggles-on": {
        "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "router": {
            "ingress": {"enabled": True, "className": "nginx", "tls": [{"hosts": ["a.example"], "secretName": "tls"}]},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "inference-gateway"}], "hostnames": ["a.example"]},
            "apiKeySecret": {"name": "splitserve-api", "key": "key"},
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}}}
            ],
        },
        "prefill": {"nodeSelector": {"gpu.nvidia.com/class": "H100"}, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["1"]}]}]}}}},
    },
    "no-monitoring-crds": {
        "monitoring": {"podMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
    "external-kvstore": {"externalKvstore": {"address": "mooncake-master.kv.svc:50051"}},
    "static-discovery": {
        "router": {"discovery": {"mode": "static", "static": {"prefill": ["10.0.0.1:50071", "10.0.0.2:50071"]}}}
    },
    "model-from-image": {"model": {"source": "image", "image": {"reference": "registry.example/models/llama:8b"}}},
    "model-from-hostpath": {"model": {"source": "hostPath", "hostPath": {"path": "/mnt/models"}, "path": "llama-8b"}},
    "autoscaling-keda": {"autoscaling": {"mode": "keda", "keda": {"authModes": "bearer",
                                                                   "authenticationRef": {"name": "prom-auth"}}}},
    "autoscaling-hpa": {"autoscaling": {"mode": "hpa", "hpa": {"matchLabels": {"namespace": "llm"}}}},
    "multi-node": {"prefill": {"tensorParallelSize": 8, "leaderWorkerSet": {"enabled": True, "size": 2}},
                   "decode": {"tensorParallelSize": 16, "leaderWorkerSet": {"enabled": True, "size": 4}},
                   "autoscaling": {"mode": "keda"}},
    "inference-pool": {"inferencePool": {"enabled": True, "targetPort": 8080, "objectives": [
        {"name": "chat-premium", "priority": 10}, {"name": "batch"}],
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "inference-gateway"}]},
        "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]}},
}  # fmt: skip


@pytest.fixture(params=sorted(VALUE_SETS), ids=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> dict[str, Any]:
    return VALUE_SETS[request.param]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name -> its single splitserve container."""
    return {name: tpl["spec"]["containers"][0] for name, tpl in pod_templates(docs).items()}


# --- validity ---------------------------------------------------------------------


def test_chart_lints_clean_with_every_value_set(value_set: dict[str, Any]) -> None:
    report = helm_python.lint(CHART_DIR, value_set, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert report["messages"] == []


def test_every_manifest_validates_against_the_kubernetes_schema(render: Render, value_set: dict[str, Any]) -> None:
    docs = render(value_set)
    assert len(docs) > 10
    for doc in docs:
        if is_vendored(doc):
            errors = crd_errors(doc)
            assert not errors, f"{doc['kind']}/{doc['metadata']['name']} breaks its CRD schema: {errors}"
            continue
        if doc["kind"] in CRD_KINDS:
            continue  # checked structurally below
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_resource_names_fit_kubernetes_limits_for_a_long_release_name(render: Render) -> None:
    release = "a-very-long-release-name-for-the-production-cluster-x"  # 53 chars, Helm's maximum
    for doc in render({}, release=release):
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]


def test_containers_use_only_flags_documented_in_interfaces_md(render: Render, interfaces_text: str) -> None:
    flags = documented_flags(interfaces_text)
    for value_set in VALUE_SETS.values():
        for name, container in containers(render(value_set)).items():
            command, *args = container["args"]
            assert command in flags, f"{name} runs undocumented subcommand {command}"
            used = {a for a in args if a.startswith("--")}
            assert used <= flags[command], f"{name}: undocumented flags {used - flags[command]}"


# --- workers ----------------------------------------------------------------------


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_worker_gpu_request_equals_tensor_parallel_size(render: Render, tp: int) -> None:
    docs = render({"prefill": {"tensorParallelSize": tp}, "decode": {"tensorParallelSize": tp}})
    for role in ("prefill", "decode"):
        container = containers(docs)[f"{FULL}-{role}"]
        assert arg_value(container["args"], "--tensor-parallel-size") == str(tp)
        assert container["resources"]["requests"]["nvidia.com/gpu"] == tp
        assert container["resources"]["limits"]["nvidia.com/gpu"] == tp
    assert "nvidia.com/gpu" not in containers(docs)[f"{FULL}-router"].get("resources", {}).get("requests", {})


def test_workers_probe_the_standard_grpc_health_service_on_their_grpc_port(render: Render) -> None:
    docs = render({"decode": {"port": 51000}})
    for role, port in (("prefill", 50071), ("decode", 51000)):
        container = containers(docs)[f"{FULL}-{role}"]
        assert arg_value(container["args"], "--port") == str(port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}


def test_termination_grace_period_covers_prestop_and_the_drain_the_worker_is_told(render: Render) -> None:
    docs = render({"decode": {"drainTimeoutSeconds": 600, "preStopSleepSeconds": 10}})
    pod = pod_templates(docs)[f"{FULL}-decode"]["spec"]
    assert pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
    # the worker drains for exactly the budget the grace period was sized for
    assert arg_value(pod["containers"][0]["args"], "--drain-timeout") == "600"
    assert pod["terminationGracePeriodSeconds"] > 600 + 10
    prefill = pod_templates(docs)[f"{FULL}-prefill"]["spec"]
    assert arg_value(prefill["containers"][0]["args"], "--drain-timeout") == "60"  # the chart default


def test_workers_get_memory_backed_dev_shm_for_nccl(render: Render) -> None:
    docs = render({"prefill": {"shmSizeLimit": "32Gi"}})
    pod = pod_templates(docs)[f"{FULL}-prefill"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_workers_advertise_their_pod_ip_and_use_their_pod_name_as_worker_id(render: Render) -> None:
    container = containers(render())[f"{FULL}-prefill"]
    assert arg_value(container["args"], "--advertise-host") == "$(POD_IP)"
    assert arg_value(container["args"], "--worker-id") == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_prefill_workers_hand_kv_over_a_path_that_crosses_pods(render: Render) -> None:
    # the workers' own default (a CUDA IPC pull on one host) would be refused by every decode pod
    by_default = containers(render())
    assert arg_value(by_default[f"{FULL}-prefill"]["args"], "--kv-transport") == "store"
    assert "--store-write-budget" not in by_default[f"{FULL}-prefill"]["args"]
    assert "--kv-transport" not in by_default[f"{FULL}-decode"]["args"]
    p2p = containers(render({"kvTransfer": {"transport": "p2p", "storeWriteBudget": "2GiB"}}))[f"{FULL}-prefill"]
    assert arg_value(p2p["args"], "--kv-transport") == "p2p"
    assert arg_value(p2p["args"], "--store-write-budget") == "2GiB"


def test_worker_scheduling_settings_reach_the_pod(render: Render) -> None:
    values = VALUE_SETS["all-toggles-on"]
    pod = pod_templates(render(values))[f"{FULL}-prefill"]["spec"]
    assert pod["nodeSelector"] == values["prefill"]["nodeSelector"]
    assert pod["affinity"] == values["prefill"]["affinity"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    router = pod_templates(render(values))[f"{FULL}-router"]["spec"]
    assert router["topologySpreadConstraints"] == values["router"]["topologySpreadConstraints"]


# --- model source -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "volume_key", "model_dir"),
    [
        ({}, "persistentVolumeClaim", "/models"),
        (VALUE_SETS["model-from-hostpath"]["model"], "hostPath", "/models/llama-8b"),
        (VALUE_SETS["model-from-image"]["model"], "image", "/models"),
    ],
)
def test_model_volume_comes_from_the_chosen_source(
    render: Render, values: dict[str, Any], volume_key: str, model_dir: str
) -> None:
    docs = render({"model": values})
    for name in (f"{FULL}-router", f"{FULL}-prefill", f"{FULL}-decode"):
        pod = pod_templates(docs)[name]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "model")
        assert volume_key in volume
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
        assert mount["readOnly"] is True
        assert arg_value(pod["containers"][0]["args"], "--model") == model_dir


# --- security ---------------------------------------------------------------------


def test_every_container_runs_non_root_on_a_read_only_root_with_writable_scratch(render: Render) -> None:
    docs = render(VALUE_SETS["all-toggles-on"])
    for name, template in pod_templates(docs).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        container = pod["containers"][0]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in ("/tmp", "/cache"):
            assert "emptyDir" in volumes[mounts[path]], f"{name}: {path} is not a writable emptyDir"


def test_only_the_router_mounts_an_api_token_and_only_for_k8s_discovery(render: Render) -> None:
    for mode, expected in (("k8s", True), ("static", False)):
        templates = pod_templates(render({"router": {"discovery": {"mode": mode}}}))
        for name, template in templates.items():
            assert template["spec"]["automountServiceAccountToken"] is (expected and name.endswith("-router")), name


# --- router and discovery -----------------------------------------------------------


def test_k8s_discovery_selects_exactly_the_worker_pods_and_router_may_watch_pods(render: Render) -> None:
    docs = render()
    args = containers(docs)[f"{FULL}-router"]["args"]
    kind, _, spec = arg_value(args, "--discovery").partition(":")
    assert kind == "k8s"
    # selectors contain commas themselves: split on the known keys.
    namespace, rest = spec.removeprefix("namespace=").split(",prefill-selector=")
    prefill_selector, decode_selector = rest.split(",decode-selector=")
    assert namespace == NAMESPACE
    templates = pod_templates(docs)
    for selector, role in ((prefill_selector, "prefill"), (decode_selector, "decode")):
        wanted = dict(pair.split("=") for pair in selector.split(","))
        matching = [n for n, t in templates.items() if wanted.items() <= t["metadata"]["labels"].items()]
        assert matching == [f"{FULL}-{role}"]
    rule = one(docs, "Role", f"{FULL}-router")["rules"][0]
    assert rule["resources"] == ["pods"] and set(rule["verbs"]) == {"get", "list", "watch"}
    binding = one(docs, "RoleBinding", f"{FULL}-router")
    service_account = templates[f"{FULL}-router"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]


def test_static_discovery_passes_address_lists_and_grants_no_rbac(render: Render) -> None:
    docs = render(VALUE_SETS["static-discovery"])
    args = containers(docs)[f"{FULL}-router"]["args"]
    assert "--discovery" not in args
    assert arg_value(args, "--prefill") == "10.0.0.1:50071,10.0.0.2:50071"
    assert arg_value(args, "--decode") == f"{FULL}-decode:50081"  # the decode pool's headless Service
    assert find(docs, "Role") == [] and find(docs, "RoleBinding") == []


def test_router_serves_port_8000_with_health_probes_behind_a_service(render: Render) -> None:
    docs = render()
    container = containers(docs)[f"{FULL}-router"]
    assert arg_value(container["args"], "--port") == "8000"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    service = one(docs, "Service", f"{FULL}-router")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_ingress_and_httproute_route_to_the_router_service(render: Render) -> None:
    docs = render(VALUE_SETS["all-toggles-on"])
    service = one(docs, "Service", f"{FULL}-router")
    ingress = one(docs, "Ingress", f"{FULL}-router")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    route = one(docs, "HTTPRoute", f"{FULL}-router")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "inference-gateway"}]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": service["metadata"]["name"], "port": 8000}]
    assert find(render(), "Ingress") == [] and find(render(), "HTTPRoute") == []


def test_router_api_key_comes_from_a_secret(render: Render) -> None:
    container = containers(render(VALUE_SETS["all-toggles-on"]))[f"{FULL}-router"]
    assert arg_value(container["args"], "--api-key") == "$(SPLITSERVE_API_KEY)"
    env = {e["name"]: e for e in container["env"]}
    assert env["SPLITSERVE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "splitserve-api", "key": "key"}


# --- kvstore ----------------------------------------------------------------------


def test_in_chart_kvstore_nodes_request_the_memory_they_may_fill(render: Render) -> None:
    docs = render({"kvstore": {"nodes": {"capacityGiB": 48, "memoryOverheadGiB": 4, "replicas": 3}}})
    nodes = one(docs, "StatefulSet", f"{FULL}-kvstore-node")
    assert nodes["spec"]["replicas"] == 3
    container = nodes["spec"]["template"]["spec"]["containers"][0]
    assert arg_value(container["args"], "--capacity") == "48GiB"
    assert arg_value(container["args"], "--master") == f"{FULL}-kvstore-master:50051"
    assert container["resources"]["requests"]["memory"] == "52Gi"
    assert container["resources"]["limits"]["memory"] == "52Gi"
    master = one(docs, "Service", f"{FULL}-kvstore-master")
    assert {p["port"] for p in master["spec"]["ports"]} == {50051, 9100, 5560, 5561}
    for role in ("prefill", "decode"):
        args = containers(docs)[f"{FULL}-{role}"]["args"]
        assert arg_value(args, "--kvstore") == f"{FULL}-kvstore-master:50051"


def test_external_kvstore_address_replaces_the_in_chart_store(render: Render) -> None:
    docs = render(VALUE_SETS["external-kvstore"])
    components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs}
    assert components.isdisjoint({"kvstore-master", "kvstore-node"})
    for role in ("prefill", "decode"):
        args = containers(docs)[f"{FULL}-{role}"]["args"]
        assert arg_value(args, "--kvstore") == "mooncake-master.kv.svc:50051"
    assert "--kvstore-events" not in containers(docs)[f"{FULL}-router"]["args"]


def test_router_indexes_the_in_chart_store_through_its_kv_events(render: Render) -> None:
    args = containers(render())[f"{FULL}-router"]["args"]
    assert arg_value(args, "--kvstore-events") == f"tcp://{FULL}-kvstore-master:5560"


# --- availability and network ---------------------------------------------------------


def test_disruption_budgets_cover_router_workers_and_store_nodes(render: Render) -> None:
    docs = render()
    workloads = {n: t["metadata"]["labels"] for n, t in pod_templates(docs).items()}
    covered = set()
    for pdb in find(docs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        covered |= {n for n, labels in workloads.items() if selector.items() <= labels.items()}
    expected = {f"{FULL}-{c}" for c in ("router", "prefill", "decode", "kvstore-node")}
    assert covered == expected  # not the single master: a budget there would block every node drain


def test_network_policies_open_only_router_http_metrics_and_in_release_traffic(render: Render) -> None:
    docs = render()
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    assert policies[f"{FULL}-router"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert policies[f"{FULL}-metrics"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    internal = policies[f"{FULL}-internal"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert internal["app.kubernetes.io/instance"] == RELEASE
    for name, template in pod_templates(docs).items():
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports & {"http", "metrics"}, f"{name} exposes no port a policy admits"
    assert find(render(VALUE_SETS["no-monitoring-crds"]), "NetworkPolicy") == []


# --- monitoring -------------------------------------------------------------------


def test_monitoring_crds_render_only_when_enabled(render: Render) -> None:
    assert not [d for d in render() if d["apiVersion"].startswith("monitoring.coreos.com")]
    docs = render(VALUE_SETS["all-toggles-on"])
    assert {d["kind"] for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"} == {"PodMonitor", "PrometheusRule"}


def test_pod_monitor_scrapes_every_component_on_a_named_metrics_port(render: Render) -> None:
    docs = render(VALUE_SETS["all-toggles-on"])
    monitor = one(docs, "PodMonitor", FULL)["spec"]
    endpoint_ports = {e["port"] for e in monitor["podMetricsEndpoints"]}
    assert all(e["path"] == "/metrics" for e in monitor["podMetricsEndpoints"])
    for name, template in pod_templates(docs).items():
        assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items(), name
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports & endpoint_ports, f"{name} is not scraped"


def test_prometheus_rule_carries_the_plain_rules_file_verbatim(render: Render) -> None:
    rule = one(render(VALUE_SETS["all-toggles-on"]), "PrometheusRule", FULL)
    assert rule["spec"] == yaml.safe_load(ALERT_RULES.read_text())
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert len(alerts) >= 4
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
            assert r["labels"]["severity"] in {"warning", "critical"}


@pytest.mark.parametrize(("label", "value"), [("grafana_dashboard", "1"), ("dashboards.example/load", "yes")])
def test_dashboards_ship_as_configmaps_with_the_sidecar_label(render: Render, label: str, value: str) -> None:
    docs = render({"monitoring": {"dashboards": {"label": label, "labelValue": value, "namespace": "grafana"}}})
    maps = [d for d in find(docs, "ConfigMap") if label in d["metadata"]["labels"]]
    files = sorted(p.name for p in DASHBOARD_DIR.glob("*.json"))
    assert sorted(k for m in maps for k in m["data"]) == files
    for config_map in maps:
        assert config_map["metadata"]["labels"][label] == value
        assert config_map["metadata"]["namespace"] == "grafana"
        for name, text in config_map["data"].items():
            assert json.loads(text) == json.loads((DASHBOARD_DIR / name).read_text())
    off = render({"monitoring": {"dashboards": {"enabled": False}}})
    assert not [d for d in find(off, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
