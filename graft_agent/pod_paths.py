"""Guest paths that name a pod's shared parts in the OCI specs the agent receives (part of
the agent API: the shim writes them, the agent provides what they name on first use).

  linux.namespaces[].path = POD_NAMESPACES/<ipc|uts|pid>   the pod's IPC, UTS or PID namespace
  mounts[].source         = POD_SHM (a bind mount)         the pod's /dev/shm tmpfs
"""

POD_DIR = "/run/graft/pod"
POD_NAMESPACES = f"{POD_DIR}/ns"
POD_SHM = f"{POD_DIR}/shm"
SHARED_NAMESPACES = ("ipc", "uts", "pid")
