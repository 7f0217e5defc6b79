"""ttrpc (containerd's lightweight RPC protocol) over asyncio: unary server and client.

Host-neutral: needs only the standard library and protobuf, so the guest agent ships it too.
"""

from .client import Client
from .server import Handler, Server
from .status import Code, TtrpcError

__all__ = ["Client", "Code", "Handler", "Server", "TtrpcError"]
