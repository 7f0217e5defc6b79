"""Runtime options containerd writes to `start`'s stdin."""
from __future__ import annotations

import os

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

CONFIG_ENV = "GRAFT_CONFIG"
_OPTIONS_TYPE = "runtimeoptions.v1.Options"


def config_path_from_options(data: bytes) -> str:
    """ConfigPath from a `runtimeoptions.v1.Options` Any; "" when absent or of another type
    (containerd 2.3 sends BootstrapParams instead, which carry no config path)."""
    if not data:
        return ""
    try:
        wrapped = any_pb2.Any.FromString(data)
    except DecodeError:
        return ""
    if wrapped.type_url.rsplit("/", 1)[-1] != _OPTIONS_TYPE:
        return ""
    from shim.api.containerd import runtimeoptions_pb2

    try:
        return runtimeoptions_pb2.Options.FromString(wrapped.value).config_path
    except DecodeError:
        return ""


def resolve_config_path(options_data: bytes, environ: dict[str, str] | None = None) -> str:
    """The config file: runtime options first, then $GRAFT_CONFIG, else "" (built-in defaults)."""
    env = os.environ if environ is None else environ
    return config_path_from_options(options_data) or env.get(CONFIG_ENV, "")


# `delete` gets no options on stdin: `start` leaves them in the bundle (as runc's shim does).
_SAVED = "graft-options.json"


def save_config_path(bundle, config_path: str) -> None:
    import json

    (bundle / _SAVED).write_text(json.dumps({"config_path": config_path}))


def saved_config_path(bundle) -> str:
    import json

    try:
        return str(json.loads((bundle / _SAVED).read_text()).get("config_path", ""))
    except (OSError, ValueError, AttributeError):
        return ""
