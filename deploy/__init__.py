"""Kubernetes deployment of graft: manifests, the node installer, the pod overhead."""
