"""graft guest agent: PID 1 of every graft VM, serving the agent API over ttrpc.

Kept import-light on purpose: this package is on the cold-boot critical path.
"""

__version__ = "0.1.0"
