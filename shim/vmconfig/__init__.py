"""What a pod's VM is made of: the pod's requests (pod_resources) and the graft config turned
into a HypervisorConfig (hypervisor_config). Below both the factory and the sandbox."""
