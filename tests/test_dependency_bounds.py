"""pyproject's lower bounds on grpcio / protobuf admit only runtimes that the generated stubs accept.

The stubs in contracts/rpc/ are made by grpcio-tools and check the installed runtime at import; a bound
below what they need installs fine and then fails on the first `import contracts.rpc`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RPC = ROOT / "contracts" / "rpc"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _lower_bound(package: str) -> tuple[int, ...]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}\s*>=\s*([\d.]+)", requirement.strip())
        if match:
            return _version(match.group(1))
    raise AssertionError(f"pyproject.toml has no `{package}>=X` dependency")


def _generated(pattern: str, glob: str) -> tuple[int, ...]:
    versions = {_version(m) for path in RPC.glob(glob) for m in re.findall(pattern, path.read_text())}
    assert versions, f"no version found in {glob}"
    return max(versions)


def test_grpcio_lower_bound_covers_generated_stubs():
    needed = _generated(r"GRPC_GENERATED_VERSION = '([\d.]+)'", "*_pb2_grpc.py")
    for package in ("grpcio", "grpcio-health-checking"):
        assert _lower_bound(package) >= needed, f"stubs need {package}>={'.'.join(map(str, needed))}"


def test_protobuf_lower_bound_covers_generated_messages():
    needed = _generated(r"# Protobuf Python Version: ([\d.]+)", "*_pb2.py")
    bound = _lower_bound("protobuf")
    assert bound >= needed, f"messages need protobuf>={'.'.join(map(str, needed))}"
    assert bound[0] == needed[0], "protobuf checks the major version exactly: bound and generated code must share it"
