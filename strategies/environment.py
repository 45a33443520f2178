"""Where this process sits in the job, read from the environment only (never from user code).

Three kinds are recognised, in this order:

- torchrun / torch elastic: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
  ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (what ``torch.distributed.run`` sets);
- SLURM (``srun`` without torchrun): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
  ``SLURM_NODEID``, ``SLURM_JOB_NODELIST`` (the first host is the main address) and a port
  derived from ``SLURM_JOB_ID`` unless ``MASTER_PORT`` is set;
- a single process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True, slots=True)
class ClusterEnvironment:
    kind: str                 # "torchelastic" | "slurm" | "single"
    global_rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    main_address: str = "127.0.0.1"
    main_port: int = 29500

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"Environment variable {key} is missing, but the other torchrun/SLURM variables are set. "
                             "Launch with `trainer launch` or torchrun, which set all of them.")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {key}={value!r} is not an integer.") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``"gpu[07-09,12],cpu3"`` -> ``"gpu07"``."""
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    match = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", first)
    if not match:
        return first
    prefix, ranges, suffix = match.groups()
    start = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{start}{suffix}"


def detect_environment(env: Mapping[str, str] | None = None) -> ClusterEnvironment:
    """Where this process sits in the job, read from the launcher's environment variables.

    Args:
        env: the variables to read; ``os.environ`` by default. torchrun's ``RANK``/``WORLD_SIZE``
            (and ``trainer launch``, which runs torchrun) come first, then SLURM's ``SLURM_PROCID``
            and friends; without either, one process.

    Returns:
        A ``ClusterEnvironment`` (kind, global and local rank, world size, node rank, main address and port).
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return ClusterEnvironment(
            kind="torchelastic", global_rank=_int(env, "RANK"), world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK", 0), local_world_size=_int(env, "LOCAL_WORLD_SIZE", 1),
            node_rank=_int(env, "GROUP_RANK", 0), main_address=env.get("MASTER_ADDR", "127.0.0.1"),
            main_port=_int(env, "MASTER_PORT", 29500))
    if "SLURM_PROCID" in env and _int(env, "SLURM_NTASKS", 1) > 1 and env.get("SLURM_JOB_NAME") not in ("bash",
                                                                                                          "interactive"):
        job_id = _int(env, "SLURM_JOB_ID", 0)
        return ClusterEnvironment(
            kind="slurm", global_rank=_int(env, "SLURM_PROCID"), world_size=_int(env, "SLURM_NTASKS"),
            local_rank=_int(env, "SLURM_LOCALID", 0),
            local_world_size=_int(env, "SLURM_NTASKS_PER_NODE", 0) or max(
                1, _int(env, "SLURM_NTASKS") // max(1, _int(env, "SLURM_NNODES", 1))),
            node_rank=_int(env, "SLURM_NODEID", 0),
            main_address=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST",
                                                                      env.get("SLURM_NODELIST", "127.0.0.1"))),
            main_port=_int(env, "MASTER_PORT", 10000 + job_id % 20000))
    return ClusterEnvironment(kind="single")
