"""A child process's own peak resident memory, for the tests that run one to measure it.

``ru_maxrss`` cannot tell it: Python starts a child with vfork, and Linux's exec keeps the high-water
mark of the memory it replaces as the child's ``ru_maxrss`` (so does ``RUSAGE_CHILDREN``, the
largest over every child so far): after a slow test had left the pytest process at 1.6 GB
resident, a 10^5-layer run that peaked at 140 MiB read 1.6 GB. ``VmHWM`` in /proc/self/status is
the peak of the child's own memory since its exec (benchmarks/test_deep.py reads it too).

:data:`PEAK_BYTES` is source for the child: it defines ``own_peak_bytes()`` (``ru_maxrss`` where
there is no /proc, as on macOS; the parent's resident set may then count).
"""

PEAK_BYTES = '''
def own_peak_bytes():
    try:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if __import__("sys").platform == "darwin" else 1024)
'''
