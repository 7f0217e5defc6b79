"""Generated bindings of the agent API (graft_agent/protos/agent.proto).

The modules under ``gen/`` are produced at setup time by ``hack/gen_protos.py``
and never committed.
"""
try:
    from .gen import agent_pb2
except ImportError as exc:  # pragma: no cover - depends on setup having run
    raise ImportError(
        "graft agent protobuf bindings are missing: run `python3 hack/gen_protos.py`"
    ) from exc

SERVICE_NAME = "graft.agent.v1.AgentService"

__all__ = ["agent_pb2", "SERVICE_NAME"]
