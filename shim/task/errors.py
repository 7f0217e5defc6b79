"""Domain errors of the task layer (shared with the rest of the shim via shim.errors).

The RPC edge (shim/task_service.py) maps them to ttrpc codes with shim.errors.to_ttrpc_error.
"""
from __future__ import annotations

from shim.errors import (AlreadyExists, FailedPrecondition, GraftError, InvalidArgument,
                         NotFound, Unavailable)
from shim.ttrpc import Code


class Unimplemented(GraftError):
    code = Code.UNIMPLEMENTED


__all__ = ["AlreadyExists", "FailedPrecondition", "GraftError", "InvalidArgument", "NotFound",
           "Unavailable", "Unimplemented"]
