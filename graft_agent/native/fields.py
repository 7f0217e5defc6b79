"""Walking OCI JSON documents with errors that name the field (shared by the spec parsers)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InvalidArgument

UNSUPPORTED = "is not supported by the native runtime"


def objects(value: object, field: str) -> list[tuple[str, dict]]:
    """A list of JSON objects, each with its own field name (`mounts[3]`); None is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{field} must be a list")
    out = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where} must be an object")
        out.append((where, item))
    return out


def only_known(doc: object, field: str, known: Iterable[str],
               refused: dict[str, str] | None = None) -> dict:
    """`doc` as an object whose every key is known; a refused key says why it is refused."""
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{field} must be an object")
    known = set(known)
    for key in doc:
        name = f"{field}.{key}" if field else key
        if refused and key in refused:
            why = refused[key]
            raise InvalidArgument(f"{name} {why}" if why.startswith(UNSUPPORTED) else f"{name}: {why}")
        if key not in known:
            raise InvalidArgument(f"{name} {UNSUPPORTED}")
    return doc
