"""The one exception `graft guest build` raises for anything it cannot do."""
from __future__ import annotations


class GuestImageError(Exception):
    """A guest image cannot be built; the message names the package, file or tool."""
