"""Runtime options containerd writes to `start`'s stdin.

`start` runs for every container, so it must not import protobuf (~30 ms): the two messages
read here — google.protobuf.Any{type_url=1, value=2} holding runtimeoptions.v1.Options
{type_url=1, config_path=2, config_body=3} — are decoded from the wire format directly (unit
tests check the decoder against protobuf's own encoder).
"""
from __future__ import annotations

import json
import os

CONFIG_ENV = "GRAFT_CONFIG"
_OPTIONS_TYPE = "runtimeoptions.v1.Options"
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Malformed(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def length_delimited_fields(data: bytes) -> dict[int, bytes]:
    """Field number → bytes of the last length-delimited occurrence (other wire types are
    skipped). _Malformed on anything that is not a valid message."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == _VARINT:
            _, pos = _varint(data, pos)
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed("truncated field")
            fields[number] = data[pos:pos + size]
            pos += size
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > len(data):
                raise _Malformed("truncated field")
        else:
            raise _Malformed(f"wire type {wire}")
    return fields


def config_path_from_options(data: bytes) -> str:
    """ConfigPath from a `runtimeoptions.v1.Options` Any; "" when absent or of another type
    (containerd 2.3 sends BootstrapParams instead, which carry no config path)."""
    if not data:
        return ""
    try:
        wrapped = length_delimited_fields(data)
        type_url = wrapped.get(1, b"").decode()
        if type_url.rsplit("/", 1)[-1] != _OPTIONS_TYPE:
            return ""
        return length_delimited_fields(wrapped.get(2, b"")).get(2, b"").decode()
    except (_Malformed, UnicodeDecodeError):
        return ""


def resolve_config_path(options_data: bytes, environ: dict[str, str] | None = None) -> str:
    """The config file: runtime options first, then $GRAFT_CONFIG, else "" (built-in defaults)."""
    env = os.environ if environ is None else environ
    return config_path_from_options(options_data) or env.get(CONFIG_ENV, "")


# `delete` gets no options on stdin: `start` leaves them in the bundle (as runc's shim does).
_SAVED = "graft-options.json"


def save_config_path(bundle: str | os.PathLike, config_path: str) -> None:
    with open(os.path.join(bundle, _SAVED), "w") as f:
        f.write(json.dumps({"config_path": config_path}))


def saved_config_path(bundle: str | os.PathLike) -> str:
    try:
        with open(os.path.join(bundle, _SAVED)) as f:
            return str(json.loads(f.read()).get("config_path", ""))
    except (OSError, ValueError, AttributeError):
        return ""
