"""Validate custom resources against the published CRD schemas vendored in crds/.

kubernetes-validate knows only the core kinds. For a CRD kind we take the
openAPIV3Schema of the served version and check the object with jsonschema, strictly:
an object schema that lists its properties rejects any other key, as the API server's
pruning would silently drop it (a typo in a chart must fail here, not vanish there).
CEL rules (x-kubernetes-validations) are not evaluated.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"


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
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(doc)]
