"""What every ttrpc service of the shim does at its edge: log each call, turn domain errors into
the status codes containerd understands, and write timestamps."""
from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import timestamp_pb2

from shim.errors import to_ttrpc_error
from shim.ttrpc import TtrpcError

log = logging.getLogger(__name__)

_BRIEF_FIELDS = ("id", "exec_id", "sandbox_id")


def rpc_edge(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Decorate a service method: log the call and map its errors to ttrpc statuses."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any) -> Any:
        log.debug("%s %s", name, _brief(request))
        try:
            return await handler(self, request)
        except TtrpcError:
            raise
        except Exception as exc:
            error = to_ttrpc_error(exc)
            log.info("%s failed: %s", name, error)
            raise error from exc
    return wrapper


def _brief(request: Any) -> str:
    fields = [f"{k}={getattr(request, k)!r}" for k in _BRIEF_FIELDS if hasattr(request, k)]
    return " ".join(fields)


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp
