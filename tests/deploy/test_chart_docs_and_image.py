"""The chart README documents every value; the Dockerfile builds every package as non-root."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml
from deploy_support import CHART_DIR, REPO


def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths.extend(value_paths(value, f"{path}."))
        else:
            paths.append(path)
    return paths


def test_readme_values_table_documents_every_value() -> None:
    documented = set(re.findall(r"^\| `([^`]+)` \|", (CHART_DIR / "README.md").read_text(), re.MULTILINE))
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    undocumented = [path for path in value_paths(values) if not any(path == d or path.startswith(f"{d}.") for d in documented)]
    assert not undocumented, f"add to the README values table: {undocumented}"


def test_dockerfile_installs_every_package_and_runs_splitserve_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\S+) \./", dockerfile, re.MULTILINE))
    assert packages <= copied, f"Dockerfile does not COPY {sorted(packages - copied)}"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", dockerfile, re.MULTILINE)
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    user = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0")), "the image must not run as root"
    assert re.search(r'^ENTRYPOINT \["splitserve"\]', dockerfile, re.MULTILINE)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    assert not packages & set(ignored), "a package the image installs is excluded from the build context"
