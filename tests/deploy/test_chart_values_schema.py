"""values.schema.json rejects values the chart cannot run with, naming the offending key."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

REJECTED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("tensor parallel size 0", {"prefill": {"tensorParallelSize": 0}}, ["/prefill/tensorParallelSize", "minimum"]),
    ("unknown top-level key", {"replicaCount": 3}, ["additional properties 'replicaCount'"]),
    ("unknown nested key", {"decode": {"gpus": 2}}, ["/decode", "additional properties 'gpus'"]),
    ("wrong type", {"decode": {"replicas": "two"}}, ["/decode/replicas", "want integer"]),
    ("unknown policy", {"router": {"policy": "fastest"}}, ["/router/policy", "kv-aware"]),
    ("unknown discovery mode", {"router": {"discovery": {"mode": "consul"}}}, ["/router/discovery/mode"]),
    ("unknown model source", {"model": {"source": "s3"}}, ["/model/source"]),
    ("image source without a reference", {"model": {"source": "image"}}, ["/model/image/reference"]),
    ("negative drain timeout", {"decode": {"drainTimeoutSeconds": -1}}, ["/decode/drainTimeoutSeconds"]),
    ("port out of range", {"router": {"port": 70000}}, ["/router/port", "maximum"]),
    ("store capacity 0", {"kvstore": {"nodes": {"capacityGiB": 0}}}, ["/kvstore/nodes/capacityGiB"]),
    ("external store without a port", {"externalKvstore": {"address": "kv-master"}}, ["/externalKvstore/address"]),
    ("HTTPRoute without a Gateway", {"router": {"httpRoute": {"enabled": True}}}, ["/router/httpRoute/parentRefs"]),
    ("malformed quantity", {"prefill": {"shmSizeLimit": "lots"}}, ["/prefill/shmSizeLimit"]),
    ("a KV transport that cannot cross pods", {"kvTransfer": {"transport": "direct"}}, ["/kvTransfer/transport"]),
    ("malformed store write budget", {"kvTransfer": {"storeWriteBudget": "2G"}}, ["/kvTransfer/storeWriteBudget"]),
]


@pytest.mark.parametrize(("values", "expected"), [(v, e) for _, v, e in REJECTED], ids=[r[0] for r in REJECTED])
def test_values_outside_the_schema_are_rejected_with_a_clear_message(
    chart: Any, values: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as rejected:
        chart.render(values, name="demo", namespace="llm")
    message = str(rejected.value)
    for fragment in expected:
        assert fragment in message, message


@pytest.mark.parametrize(
    "values",
    [
        {"prefill": {"tensorParallelSize": 8}, "decode": {"replicas": 0}},
        {"externalKvstore": {"address": "10.1.2.3:50051"}},
        {"model": {"source": "hostPath", "hostPath": {"path": "/mnt/models"}}},
        {"router": {"discovery": {"mode": "static", "static": {"decode": ["d-0:50081"]}}}},
    ],
)
def test_sensible_values_pass_the_schema(chart: Any, values: dict[str, Any]) -> None:
    chart.validate_schema(chart.merge_values(values))
