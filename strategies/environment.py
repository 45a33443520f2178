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
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import signal


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


class SLURMEnvironment:
    """What the Trainer does under SLURM (Lightning's name): ``Trainer(plugins=[SLURMEnvironment(...)])``.

    The ranks themselves are always read from the environment (``detect_environment``). This object only
    holds the auto-requeue settings: on ``requeue_signal`` (SIGUSR1 by default: what
    ``#SBATCH --signal=USR1@90`` sends 90 s before the time limit) every rank saves ``last.ckpt`` at the
    same optimizer step, rank zero runs ``scontrol requeue $SLURM_JOB_ID``, and the processes exit 0; the
    requeued job (``SLURM_RESTART_COUNT`` >= 1) resumes from that ``last.ckpt`` with the same command, even
    without ``fit(ckpt_path=...)``. It is on by default in a SLURM batch job (``SLURM_JOB_ID`` set; not in an
    interactive ``srun --pty bash``). ``auto_requeue=False`` leaves the signal alone (its default action
    ends the process) and never requeues.
    """

    def __init__(self, auto_requeue: bool = True, requeue_signal: "signal.Signals | int | None" = None) -> None:
        import signal

        if not isinstance(auto_requeue, bool):
            raise TypeError(f"SLURMEnvironment(auto_requeue={auto_requeue!r}): expected True or False.")
        try:
            self.requeue_signal = signal.SIGUSR1 if requeue_signal is None else signal.Signals(requeue_signal)
        except ValueError:
            raise ValueError(f"SLURMEnvironment(requeue_signal={requeue_signal!r}): not a signal number. Pass the "
                             "signal named in #SBATCH --signal=..., e.g. signal.SIGUSR1 (the default) or "
                             "signal.SIGUSR2.") from None
        if self.requeue_signal in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGINT):
            raise ValueError(f"SLURMEnvironment(requeue_signal={self.requeue_signal.name}): that signal cannot be "
                             "caught or already means stop (SIGTERM saves, Ctrl-C interrupts). Use SIGUSR1 or "
                             "SIGUSR2, and the same in #SBATCH --signal=USR1@90.")
        self.auto_requeue = auto_requeue

    def __repr__(self) -> str:
        return f"SLURMEnvironment(auto_requeue={self.auto_requeue}, requeue_signal={self.requeue_signal.name})"

    @staticmethod
    def in_batch_job(env: Mapping[str, str] | None = None) -> bool:
        """A SLURM job that can be requeued: ``SLURM_JOB_ID`` set, not an interactive shell."""
        env = os.environ if env is None else env
        return bool(env.get("SLURM_JOB_ID")) and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")

    def requeues(self, env: Mapping[str, str] | None = None) -> bool:
        """Whether the requeue signal is handled in this process."""
        return self.auto_requeue and self.in_batch_job(env)

    @staticmethod
    def requeued(env: Mapping[str, str] | None = None) -> bool:
        """This run is a requeued job (SLURM counts its restarts in ``SLURM_RESTART_COUNT``)."""
        env = os.environ if env is None else env
        try:
            return SLURMEnvironment.in_batch_job(env) and int(env.get("SLURM_RESTART_COUNT", "0")) > 0
        except ValueError:
            return False

    def requeue(self) -> str:
        """Run ``scontrol requeue $SLURM_JOB_ID``; returns what happened, for the log."""
        import subprocess

        job = os.environ["SLURM_JOB_ID"]
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"`scontrol requeue {job}` could not run ({err}); requeue the job by hand"
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()
            return f"`scontrol requeue {job}` failed (exit {done.returncode}: {said}); requeue the job by hand"
        return f"requeued job {job} (`scontrol requeue {job}`): it resumes from this checkpoint with the same command"
