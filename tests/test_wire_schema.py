"""Our compiled KKM protocol descriptors against the wire contract: the fact tables copied into
proto/facts/wire-*.json (the tests need nothing outside the repository), themselves checked
against ../shared/protocol/ when that is present beside the repository.

Names are relative to the package, nested types dotted ("TicketRequest.Item"). JSON reserved
ranges are inclusive [a, b]; DescriptorProto reserved ranges are end-exclusive, enum reserved
ranges end-inclusive, so both are normalised to inclusive pairs here.
"""

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor, descriptor_pb2

FACTS_DIR = Path(__file__).resolve().parents[1] / "proto" / "facts"
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "protocol"
VERSIONS = {203: "2.0.3", 204: "2.0.4"}

FieldProto = descriptor_pb2.FieldDescriptorProto
Pairs = list[tuple[int, int]]


@dataclass(frozen=True)
class Schema:
    package: str
    messages: dict[str, descriptor_pb2.DescriptorProto]
    enums: dict[str, descriptor_pb2.EnumDescriptorProto]


def load_wire(version: int) -> dict[str, Any]:
    path = FACTS_DIR / f"wire-{VERSIONS[version]}.json"
    wire: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return wire


WIRE = {version: load_wire(version) for version in VERSIONS}


def compiled(version: int) -> Schema:
    # Imported by name: the generated stubs do not pass mypy --strict themselves.
    module = importlib.import_module(f"ofdproto.kkm.v{version}.kkm_pb2")
    file_descriptor: descriptor.FileDescriptor = module.DESCRIPTOR
    file_proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(file_proto)
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = prefix + message.name
        messages[name] = message
        for enum in message.enum_type:
            enums[f"{name}.{enum.name}"] = enum
        for nested in message.nested_type:
            walk(nested, f"{name}.")

    for message in file_proto.message_type:
        walk(message, "")
    for enum in file_proto.enum_type:
        enums[enum.name] = enum
    return Schema(file_proto.package, messages, enums)


SCHEMAS = {version: compiled(version) for version in VERSIONS}


def json_type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return FieldProto.Type.Name(field.type).removeprefix("TYPE_").lower()


def json_label(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return FieldProto.Label.Name(field.label).removeprefix("LABEL_").lower()


def relative_type_name(schema: Schema, type_name: str) -> str:
    return type_name.removeprefix(f".{schema.package}.")


def inclusive(pairs: list[list[int]]) -> Pairs:
    return sorted((a, b) for a, b in pairs)


def message_cases() -> list[Any]:
    return [
        pytest.param(version, name, id=f"{version}-{name}")
        for version, wire in WIRE.items()
        for name in wire["messages"]
    ]


def field_cases() -> list[Any]:
    return [
        pytest.param(version, message, field, id=f"{version}-{message}.{field['name']}")
        for version, wire in WIRE.items()
        for message, spec in wire["messages"].items()
        for field in spec["fields"]
    ]


def enum_cases() -> list[Any]:
    return [
        pytest.param(version, name, id=f"{version}-{name}")
        for version, wire in WIRE.items()
        for name in wire["enums"]
    ]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_protocol_version(version: int) -> None:
    assert WIRE[version]["protocol_version"] == version
    assert SCHEMAS[version].package == f"ofdproto.kkm.v{version}"


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_message_names(version: int) -> None:
    ours, theirs = set(SCHEMAS[version].messages), set(WIRE[version]["messages"])
    assert ours - theirs == set(), "messages not in the wire contract"
    assert theirs - ours == set(), "wire contract messages we lack"


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_enum_names(version: int) -> None:
    ours, theirs = set(SCHEMAS[version].enums), set(WIRE[version]["enums"])
    assert ours - theirs == set(), "enums not in the wire contract"
    assert theirs - ours == set(), "wire contract enums we lack"


@pytest.mark.parametrize(("version", "name"), message_cases())
def test_message_field_set(version: int, name: str) -> None:
    assert name in SCHEMAS[version].messages, f"no message {name}"
    message = SCHEMAS[version].messages[name]
    ours = {f.number: f.name for f in message.field}
    theirs = {f["number"]: f["name"] for f in WIRE[version]["messages"][name]["fields"]}
    assert ours == theirs
    assert len(message.field) == len(WIRE[version]["messages"][name]["fields"])


@pytest.mark.parametrize(("version", "message", "spec"), field_cases())
def test_field(version: int, message: str, spec: dict[str, Any]) -> None:
    schema = SCHEMAS[version]
    assert message in schema.messages, f"no message {message}"
    by_number = {f.number: f for f in schema.messages[message].field}
    assert spec["number"] in by_number, f"{message} has no field number {spec['number']}"
    field = by_number[spec["number"]]
    assert field.name == spec["name"]
    assert json_label(field) == spec["label"]
    assert json_type(field) == spec["type"]
    if spec["type"] in {"enum", "message"}:
        assert relative_type_name(schema, field.type_name) == spec["type_name"]
    else:
        assert "type_name" not in spec
        assert not field.type_name
    if "default" in spec:
        assert field.HasField("default_value"), "the wire contract gives a default"
        assert field.default_value == spec["default"]
    else:
        assert not field.HasField("default_value"), "a default the wire contract does not give"


@pytest.mark.parametrize(("version", "name"), message_cases())
def test_message_reserved(version: int, name: str) -> None:
    assert name in SCHEMAS[version].messages, f"no message {name}"
    message = SCHEMAS[version].messages[name]
    ours = sorted((r.start, r.end - 1) for r in message.reserved_range)  # end-exclusive
    assert ours == inclusive(WIRE[version]["messages"][name]["reserved"])


@pytest.mark.parametrize(("version", "name"), enum_cases())
def test_enum(version: int, name: str) -> None:
    assert name in SCHEMAS[version].enums, f"no enum {name}"
    enum = SCHEMAS[version].enums[name]
    spec = WIRE[version]["enums"][name]
    assert {v.name: v.number for v in enum.value} == spec["values"]
    assert len(enum.value) == len(spec["values"])
    ours = sorted((r.start, r.end) for r in enum.reserved_range)  # end-inclusive
    assert ours == inclusive(spec["reserved"])


@pytest.mark.parametrize("version", VERSIONS.values())
def test_the_copied_facts_are_the_shared_ones(version: str) -> None:
    shared = SHARED_DIR / f"wire-{version}.json"
    if not shared.exists():
        pytest.skip("../shared/protocol is not beside this repository")
    copied = FACTS_DIR / f"wire-{version}.json"
    assert copied.read_bytes() == shared.read_bytes(), f"refresh {copied} from {shared}"
