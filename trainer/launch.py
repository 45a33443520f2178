"""Starting worker processes through torch's own elastic launcher (what torchrun uses)."""

from __future__ import annotations

import os
import sys
import uuid
from typing import NoReturn


def launch_this_script(num_processes: int) -> NoReturn:
    """Re-run the current script as ``num_processes`` ranks on this machine, wait for them, and
    exit with status 0 (or raise the launcher's error naming the failed rank)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    script = sys.argv[0]
    if not script or not os.path.isfile(script):
        raise RuntimeError(
            f"Trainer(strategy='ddp', devices={num_processes}) must start {num_processes} processes, which re-run "
            "the script; this session has no script file (an interactive session or `python -c`?). Save the code "
            f"to a file and run it, or use `trainer launch --num-processes {num_processes} train.py`.")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    print(f"Starting {num_processes} processes through torch.distributed's elastic launcher.", flush=True)
    elastic_launch(config, sys.executable)("-u", script, *sys.argv[1:])
    raise SystemExit(0)
