"""Domain errors and how they surface: ttrpc codes at the RPC edge, one
clear line at the CLI edge."""
from __future__ import annotations

from shim.ttrpc import Code, TtrpcError


class GraftError(Exception):
    """Base of domain errors; `code` is what the RPC edge answers with."""

    code = Code.UNKNOWN


class NotFound(GraftError):
    code = Code.NOT_FOUND


class AlreadyExists(GraftError):
    code = Code.ALREADY_EXISTS


class InvalidArgument(GraftError):
    code = Code.INVALID_ARGUMENT


class FailedPrecondition(GraftError):
    code = Code.FAILED_PRECONDITION


class Unavailable(GraftError):
    code = Code.UNAVAILABLE


def to_ttrpc_error(exc: BaseException) -> TtrpcError:
    """Map a domain (or agent) error to the status containerd understands."""
    if isinstance(exc, TtrpcError):
        return exc
    if isinstance(exc, GraftError):
        return TtrpcError(exc.code, str(exc))
    if isinstance(exc, (FileNotFoundError, ProcessLookupError)):
        return TtrpcError(Code.NOT_FOUND, str(exc))
    if isinstance(exc, FileExistsError):
        return TtrpcError(Code.ALREADY_EXISTS, str(exc))
    if isinstance(exc, ValueError):
        return TtrpcError(Code.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, TimeoutError):
        return TtrpcError(Code.DEADLINE_EXCEEDED, str(exc) or "timed out")
    return TtrpcError(Code.UNKNOWN, f"{type(exc).__name__}: {exc}")


def describe_failure(exc: BaseException) -> str | None:
    """One line for a CLI user, or None for a bug (let the traceback show)."""
    from shim.hypervisor.base import HypervisorError

    expected = (GraftError, TtrpcError, HypervisorError, OSError, ValueError, TimeoutError)
    if isinstance(exc, BaseExceptionGroup):
        inner = [describe_failure(e) for e in exc.exceptions]
        return "; ".join(m for m in inner if m) if all(inner) else None
    if isinstance(exc, TtrpcError):
        return f"guest agent: {exc.code.name}: {exc.message}"
    if isinstance(exc, expected):
        return str(exc) or type(exc).__name__
    return None
