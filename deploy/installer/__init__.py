"""graft's node installer (the DaemonSet's program): see deploy/README.md."""
