"""Domain errors of the task layer; the RPC edge (shim/task_service.py) maps them to codes."""
from __future__ import annotations


class TaskError(Exception):
    """Base class: something the caller asked for cannot be done."""


class NotFound(TaskError):
    pass


class AlreadyExists(TaskError):
    pass


class InvalidArgument(TaskError):
    pass


class FailedPrecondition(TaskError):
    """The object is in a state that forbids the operation (e.g. start a stopped process)."""


class Unimplemented(TaskError):
    pass


class Unavailable(TaskError):
    """The sandbox (VM/agent) is gone or unreachable."""
