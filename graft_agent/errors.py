"""Agent-level failures; the ttrpc service maps each to a status code at the edge."""

from __future__ import annotations


class AgentError(Exception):
    """Base class: `code` names a shim.ttrpc.Code member."""

    code = "UNKNOWN"


class NotFound(AgentError):
    code = "NOT_FOUND"


class AlreadyExists(AgentError):
    code = "ALREADY_EXISTS"


class InvalidArgument(AgentError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(AgentError):
    code = "FAILED_PRECONDITION"


class DeadlineExceeded(AgentError):
    code = "DEADLINE_EXCEEDED"


class RuntimeFailure(AgentError):
    """The OCI runtime (or another helper binary) failed; message carries its own words."""

    code = "INTERNAL"
