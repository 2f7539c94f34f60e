"""How many CPU cores this process may run on: what the defaults that scale with the machine
(loader workers, the report's slide workers) are sized by."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process is allowed (its affinity: a container's or taskset's share), else
    the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
