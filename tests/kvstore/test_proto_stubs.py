"""The checked-in gRPC stubs are exactly what `make protos` generates from proto/."""

from __future__ import annotations

import glob
import os
import pathlib

from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_checked_in_stubs_match_a_fresh_generation_of_every_proto(tmp_path: pathlib.Path):
    protos = sorted(glob.glob(str(REPO / "proto" / "contracts" / "rpc" / "*.proto")))
    assert protos, "no .proto files found"
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "protoc",
        f"-I{REPO / 'proto'}",
        f"-I{include}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
    ]
    assert protoc.main([*args, *protos]) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    stale = [
        str(rel) for rel in generated if not (REPO / rel).exists() or (REPO / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert stale == [], f"run `make protos` and commit: {stale}"
