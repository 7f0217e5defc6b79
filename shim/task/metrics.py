"""Stats → cgroups v2 Metrics (`io.containerd.cgroups.v2.Metrics`, what CRI decodes)."""
from __future__ import annotations

import psutil

# memory.stat keys that map 1:1 onto MemoryStat fields.
_MEMORY_KEYS = (
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file", "active_file",
    "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault", "pgmajfault",
    "workingset_refault", "workingset_activate", "workingset_nodereclaim", "pgrefill", "pgscan",
    "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree", "pglazyfreed", "thp_fault_alloc",
    "thp_collapse_alloc",
)


def metrics_from_agent(stats):
    """agent StatsContainerResponse → cgroups v2 Metrics."""
    from shim.api.containerd import cgroups_v2_pb2 as v2

    m = v2.Metrics()
    m.pids.current, m.pids.limit = stats.pids.current, stats.pids.limit
    c = stats.cpu
    m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec = c.usage_usec, c.user_usec, c.system_usec
    m.cpu.nr_periods, m.cpu.nr_throttled, m.cpu.throttled_usec = (
        c.nr_periods, c.nr_throttled, c.throttled_usec)
    mem = stats.memory
    for key in _MEMORY_KEYS:
        if key in mem.stat:
            setattr(m.memory, key, mem.stat[key])
    m.memory.usage, m.memory.usage_limit = mem.usage, mem.usage_limit
    m.memory.swap_usage, m.memory.swap_limit = mem.swap_usage, mem.swap_limit
    m.memory_events.oom = mem.oom_events
    for e in stats.io:
        m.io.usage.add(major=e.major, minor=e.minor, rbytes=e.rbytes, wbytes=e.wbytes,
                       rios=e.rios, wios=e.wios)
    return m


def vm_metrics(vmm_pid: int):
    """The pod VM seen from the host: the VMM process's CPU time and resident memory."""
    from shim.api.containerd import cgroups_v2_pb2 as v2

    m = v2.Metrics()
    try:
        proc = psutil.Process(vmm_pid)
        times = proc.cpu_times()
        m.cpu.user_usec = int(times.user * 1e6)
        m.cpu.system_usec = int(times.system * 1e6)
        m.cpu.usage_usec = m.cpu.user_usec + m.cpu.system_usec
        m.memory.usage = proc.memory_info().rss
        m.pids.current = proc.num_threads()
    except (psutil.Error, ValueError):
        pass
    return m
