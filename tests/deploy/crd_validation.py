"""Validate custom resources against the published CRD schemas vendored in crds/.

kubernetes-validate knows only the core kinds. For a CRD kind we take the
openAPIV3Schema of the served version and check the object with jsonschema, strictly:
an object schema that lists its properties rejects any other key, as the API server's
pruning would silently drop it (a typo in a chart must fail here, not vanish there).
CEL rules (x-kubernetes-validations) are not evaluated. A schema node marked
``x-splitserve-core-schema: PodTemplateSpec`` (where a vendored CRD embeds a core type, as
LeaderWorkerSet embeds pod templates) is checked with kubernetes-validate's core schema.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"
KUBE_VERSION = "1.33.0"
CORE_MARKER = "x-splitserve-core-schema"


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy in which every object schema with listed properties forbids unlisted ones."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, for every vendored CRD."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            spec = crd["spec"]
            for version in spec["versions"]:
                api_version = f"{spec['group']}/{version['name']}"
                schemas[(api_version, spec["names"]["kind"])] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def is_vendored(doc: dict[str, Any]) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in crd_schemas()


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Schema violations of a custom resource, as 'path: message' lines; [] when valid."""
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(doc)]
    return errors + core_errors(schema, doc, "")


def core_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Check the embedded core objects (marked nodes) against the Kubernetes schema."""
    if schema.get(CORE_MARKER) == "PodTemplateSpec" and isinstance(value, dict):
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"}, "template": value}
        try:
            kubernetes_validate.validate(wrapper, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in list(exc.path)[1:])
            return [f"{path}/{where}: {exc.message}"]
        return []
    errors = []
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += core_errors(sub, value[key], f"{path}/{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += core_errors(schema["items"], item, f"{path}/{i}")
    return errors
