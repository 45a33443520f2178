"""Accelerate's ``notebook_launcher``: run a function in N processes on this machine (a notebook or
any script), each one rank of a job, through torch's elastic launcher (what torchrun uses)."""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any, Callable


_AGENT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def notebook_launcher(function: Callable, args: tuple = (), num_processes: int | None = None,
                      mixed_precision: str = "no", use_port: str | int = "29500", master_addr: str = "127.0.0.1",
                      node_rank: int = 0, num_nodes: int = 1, **options: Any) -> None:
    """Call ``function(*args)`` in ``num_processes`` new processes (forked from this one, so the
    function may be defined in a notebook), each with the launcher's variables set, so an
    ``Accelerator()`` built inside joins the job; wait for all and raise if one failed.
    ``mixed_precision`` reaches every Accelerator that does not set its own.

    Example:
        >>> def train():
        ...     accelerator = Accelerator()
        ...     ...
        >>> notebook_launcher(train, num_processes=2)  # doctest: +SKIP
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from trainer.engine.script_launch import SETTINGS_ENV, frame_named_rendezvous_events

    if options:
        raise TypeError(f"notebook_launcher({', '.join(f'{k}=...' for k in sorted(options))}): rendezvous and "
                        "restart options are not supported; one machine, static rendezvous, no restarts. For several "
                        "machines use `trainer launch` on each.")
    if num_nodes != 1 or node_rank != 0:
        raise ValueError(f"notebook_launcher(num_nodes={num_nodes}, node_rank={node_rank}): one machine only. Use "
                         "`trainer launch --num-machines ...` on every machine of a multi-machine job.")
    if num_processes is None:
        import torch

        num_processes = torch.cuda.device_count() or 1
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"notebook_launcher(num_processes={num_processes!r}): expected a positive int.")
    if mixed_precision not in ("no", "fp16", "bf16", "fp8"):
        raise ValueError(f"notebook_launcher(mixed_precision={mixed_precision!r}): expected 'no', 'fp16' or 'bf16'.")
    if num_processes == 1:
        function(*args)
        return
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint=f"{master_addr}:0", max_restarts=0,
                          monitor_interval=0.1, start_method="fork")
    before = os.environ.get(SETTINGS_ENV)
    settings = json.loads(before) if before else {}
    if mixed_precision != "no":
        settings["mixed_precision"] = mixed_precision
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    # torch's agent installs its own handler for SIGINT/SIGTERM/SIGHUP/SIGQUIT and leaves it: a notebook's
    # next Ctrl-C would raise its SignalException instead of KeyboardInterrupt. The caller's come back.
    handlers = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
    try:
        with frame_named_rendezvous_events():
            elastic_launch(config, function)(*args)
    finally:
        for sig, handler in handlers.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)
        if before is None:
            os.environ.pop(SETTINGS_ENV, None)
        else:
            os.environ[SETTINGS_ENV] = before


def debug_launcher(function: Callable, args: tuple = (), num_processes: int = 2) -> None:
    """``function(*args)`` in ``num_processes`` CPU processes (Accelerate's name for testing a
    distributed function on a machine without GPUs)."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        notebook_launcher(function, args, num_processes=num_processes)
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


__all__ = ["debug_launcher", "notebook_launcher"]
