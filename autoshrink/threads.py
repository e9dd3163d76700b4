"""How many CPU threads torch uses when the user has not said: one on small machines.

torch starts one thread per core. On a machine with few cores that also runs other work, those
threads wait on each other and on the other processes. Measured on a 2-core machine
(results/threads.md, `python -m autoshrink.bench.threads`): with the cores taken by other jobs,
two threads trained `kjv-lstm` at 0.29-0.43x and `kjv-lstm-tiny` at 0.09x the speed of one
thread, and evaluated at 0.20-0.24x; with a core to spare they gained 1.2-1.9x. A spare core
left idle costs under half the run; a crowded second thread can cost nine tenths of it. So:

- `OMP_NUM_THREADS` (or `MKL_NUM_THREADS`) set: the user chose; torch already follows it.
- at most SMALL_MACHINE_CORES usable cores: one thread.
- more cores: torch's default, less the cores that other processes keep busy (the load average),
  at least one.

The command line calls `set_default_threads()` once at start-up, before any work.
"""

from __future__ import annotations

import os
from typing import Mapping

SMALL_MACHINE_CORES = 4  # up to here one busy neighbour already takes a large share of the cores
USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity and container limits; not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_average() -> float:
    """Runnable processes over the last minute (0 where the platform does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(cores: int, load: float, torch_default: int) -> int:
    """The thread count for `cores` usable cores with `load` other runnable processes."""
    if cores <= SMALL_MACHINE_CORES:
        return 1
    free = cores - int(round(load))
    return max(1, min(torch_default, free))


def set_default_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """Set torch's thread count unless the user chose one; returns the count set, or None when the
    environment decides."""
    import torch

    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in USER_VARIABLES):
        return None
    threads = choose_threads(usable_cores(), load_average(), torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads
