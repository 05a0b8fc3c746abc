"""The committed generated protobuf code is what proto/generate.py makes of the .proto files."""

import importlib.util
from pathlib import Path
from types import ModuleType

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi")
HINT = "generated protobuf code is stale: run `make proto` and commit the result"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_generate", PROTO_ROOT / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for pattern in GENERATED_PATTERNS for p in root.rglob(pattern)}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    load_generator().generate(tmp_path)
    fresh = generated_files(tmp_path)
    committed = generated_files(PROTO_ROOT)
    for proto in PROTO_ROOT.rglob("*.proto"):
        stem = proto.relative_to(PROTO_ROOT).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            twin = stem.with_name(stem.name + suffix)
            assert twin in fresh, f"proto/generate.py did not compile {proto} to {twin}"

    problems = [f"not committed: {p}" for p in sorted(map(str, fresh - committed))]
    problems += [
        f"differs from what its .proto generates: {p}"
        for p in sorted(map(str, fresh & committed))
        if (tmp_path / p).read_bytes() != (PROTO_ROOT / p).read_bytes()
    ]
    problems += [f"no .proto generates it: {p}" for p in sorted(map(str, committed - fresh))]
    assert problems == [], f"{HINT}:\n" + "\n".join(problems)
