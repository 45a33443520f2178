"""Who runs the job and how processes talk: the collectives every strategy holds by composition.

``LocalProcesses`` is the job of one process (collectives are identities). ``ProcessGroup`` is
torch.distributed's default group, started from the cluster environment (torchrun, SLURM) at
``setup`` and destroyed at ``teardown``; DDP, FSDP and DeepSpeed each hold one instead of
inheriting the code from one another.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import json
import os
import weakref
from typing import Any

import torch
import torch.distributed as dist

from .environment import ClusterEnvironment, detect_environment

REDUCE_OPS = ("mean", "sum", "max", "min")
DEFAULT_TIMEOUT_SECONDS = 600
_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN", "mean": "SUM"}

# Every DistributedDataParallel the strategies made. Their C++ reducers hold the process group; if one
# is still alive when the interpreter finalises, the group's gloo threads are torn down out of order
# and the process dies with "terminate called without an active exception" (SIGABRT) after a run
# that succeeded (measured: 2 of 12 torchrun runs of a 4-step DDP script). Releasing the reducers
# before destroying the group makes the exit clean (0 of 14).
DDP_MODULES: "weakref.WeakSet[torch.nn.parallel.DistributedDataParallel]" = weakref.WeakSet()


def _release_reducers() -> None:
    """Drop every reference a DDP module holds to the group (its reducer, logger and the group itself):
    a module still alive (a script's global, the Accelerator's) would keep the group's gloo threads
    running after destroy_process_group, into interpreter shutdown (see _import_before_the_group)."""
    for module in list(DDP_MODULES):
        for name in ("reducer", "logger", "process_group"):
            module.__dict__.pop(name, None)
    DDP_MODULES.clear()


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        _release_reducers()
        gc.collect()
        dist.destroy_process_group()


def _import_before_the_group() -> None:
    """Import torch._dynamo before the first process group exists.

    Imported after it (DDP's constructor imports it, as does torch.compile), something in it keeps
    a reference to the group for good: ``destroy_process_group`` then leaves the group's gloo threads
    (two ``pt_gloo_runloop``, one ``gloo_tcp_loop``) running into interpreter shutdown -- measured with
    plain torch 2.13: DDP built, deleted and collected, the group destroyed, the threads still there;
    imported first, they are joined by the destroy. A thread that finishes a collective there drops
    the last reference to its tensors, takes the GIL of an interpreter that is shutting down and the
    process dies with "terminate called without an active exception" (SIGABRT) after a run that
    succeeded (issue 23). DDP imports it anyway: this only moves the import (~1-3 s) earlier."""
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # pragma: no cover -- a torch without dynamo has nothing to leak
        pass


def share_cpu_threads(local_processes: int) -> None:
    """Several processes on one machine and no ``OMP_NUM_THREADS``: each gets its share of the CPUs for
    torch's intra-op threads (at least one), as Lightning's DDP does. Without it every rank ran torch's
    default (all cores): the machine was oversubscribed, and a rank's reductions (matmul, BatchNorm
    statistics) split over another number of threads than Lightning's rounded differently, so a
    two-process GAN drifted ~1e-4 (relative) from Lightning's run over a few hundred steps."""
    if local_processes < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    threads = max(1, cpus // local_processes)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # what the DataLoader workers it starts inherit


def check_timeout(timeout: Any, owner: str = "DDPStrategy") -> datetime.timedelta:
    """Seconds or a timedelta, positive, as a timedelta."""
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"{owner}(timeout={timeout!r}): expected seconds (a number) or a datetime.timedelta.")
    if seconds <= 0:
        raise ValueError(f"{owner}(timeout={timeout!r}): the timeout must be positive, e.g. timeout=60 (seconds).")
    return datetime.timedelta(seconds=seconds)


def _die_with_launcher() -> None:
    """Linux: SIGKILL this worker when its launcher (torchrun's agent) dies. torchrun starts workers
    in a session of their own, so a SIGKILLed launcher would leave them training -- racing a
    restarted run over the same checkpoint directory."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


# The TCPStore of each address this process joined, kept for the process's life. Rank zero's store is
# the server: freed with its group at end_training, it closed under a peer that had already connected
# to it for the next group (a peer done with end_training sooner), which then failed with "Connection
# was likely closed" or hung; kept, every later group of the job talks to the same live server, under
# a prefix of its own (below).
_STORES: dict[tuple[Any, ...], Any] = {}


def _group_store(env: ClusterEnvironment, timeout: datetime.timedelta, generation: int) -> Any:
    """The process group's store, with a prefix of its own per restart attempt and per group.

    The keys a process group writes to its store -- among them every rank's gloo address -- outlive
    the group: torchrun's agent keeps one TCPStore for the whole job (``TORCHELASTIC_USE_AGENT_STORE``),
    and rank zero's server is shared by every store on its port in the process (``multi_tenant``), so a
    group made after ``destroy_process_group`` (a second Accelerator or Trainer after ``end_training``
    in the same job) would find the old group's keys under the same names. A rank could then read its
    peer's address from the dead group and fail with "Gloo connectFullMesh failed ... Connection
    refused", or wait forever on a half-formed mesh. A prefix per torchrun attempt
    (TORCHELASTIC_RESTART_COUNT) and per group this process made (``generation``, counted alike on
    every rank, which create their groups in the same order) makes every group start from empty keys.
    Without the agent's store (``trainer launch --nnodes MIN:MAX`` turns it off), rank zero's process
    serves a new store at every start, so the attempt is left out of the prefix: agents count their
    attempts apart, and an agent that joins an elastic run later starts from 0 while the others do not.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is not None:
        _die_with_launcher()
    uses_agent_store = attempt is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    is_master = not uses_agent_store and env.global_rank == 0
    store: Any
    if env.world_size == 1 and not uses_agent_store:
        # nobody connects to a group of one: a port of its own (a fixed 29500 collided with any other job or
        # test process on the machine doing the same), and nothing kept once the group is gone
        store = dist.TCPStore(env.main_address, 0, 1, is_master=True, timeout=timeout)
    else:
        key = (env.main_address, env.main_port, env.world_size, is_master, uses_agent_store)
        store = _STORES.get(key)
        if store is None:  # kept for the process's life: see _STORES
            store = _STORES[key] = dist.TCPStore(env.main_address, env.main_port, env.world_size,
                                                 is_master=is_master, timeout=timeout,
                                                 **({} if uses_agent_store else {"multi_tenant": True}))
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = attempt if uses_agent_store else None
    return dist.PrefixStore(f"trainer/{run_id}/attempt_{attempt or 0}/group_{generation}", store)


class LocalProcesses:
    """The job of one process: nothing to start, every collective is an identity."""

    world_size, global_rank, local_rank = 1, 0, 0
    timeout: datetime.timedelta | None = None  # nothing to wait for
    needs_launch = False
    requested_processes = 1

    def setup(self) -> None:
        return None

    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unsqueeze(0)

    def barrier(self, name: str | None = None) -> None:
        return None

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def teardown(self) -> None:
        return None

    def explain_failure(self, err: BaseException) -> BaseException | None:
        return None

    def forget_environment(self) -> None:
        return None  # one process: nothing was read


class ProcessGroup:
    """torch.distributed's default process group for one strategy.

    Args:
        device_kind: "cpu" (gloo) or "cuda" (nccl).
        timeout: how long a collective may wait before failing (a hang becomes an error); None:
            ``collective_timeout`` from ``trainer launch`` (read when first needed), else 600 s.
        backend: override "nccl"/"gloo".
        environment: where this process sits (default: read from the environment variables once,
            when first needed -- not in the constructor, so a strategy can be built before launching).
        requested_processes: how many processes the user asked for (``devices=``); more than one in a
            process no launcher started means the Trainer must start them (``needs_launch``).
        owner: the strategy's name, for error messages.
    """

    #: default groups this process has created (the store prefix of the next one; see _group_store)
    groups_created = 0

    def __init__(self, device_kind: str = "cpu", timeout: datetime.timedelta | float | None = None,
                 backend: str | None = None, environment: ClusterEnvironment | None = None,
                 requested_processes: int = 1, owner: str = "DDPStrategy") -> None:
        if device_kind not in ("cpu", "cuda"):
            raise ValueError(f"{owner}(device_kind={device_kind!r}): expected 'cpu' or 'cuda'.")
        if isinstance(requested_processes, bool) or not isinstance(requested_processes, int) \
                or requested_processes < 1:
            raise ValueError(f"{owner}(requested_processes={requested_processes!r}): expected a positive int.")
        self.device_kind = device_kind
        self._timeout = None if timeout is None else check_timeout(timeout, owner)
        self.backend = backend or ("nccl" if device_kind == "cuda" else "gloo")
        self._environment = environment
        self.requested_processes = requested_processes
        self.owner = owner
        self._created_group = False

    @property
    def timeout(self) -> datetime.timedelta:
        if self._timeout is None:  # trainer launch passes the config file's collective_timeout to its workers
            settings = json.loads(os.environ.get("TRAINER_LAUNCH_SETTINGS") or "{}")
            self._timeout = check_timeout(settings.get("collective_timeout") or DEFAULT_TIMEOUT_SECONDS, self.owner)
        return self._timeout

    @property
    def environment(self) -> ClusterEnvironment:
        if self._environment is None:
            self._environment = detect_environment()
        return self._environment

    def forget_environment(self) -> None:
        """Read the cluster environment again at its next use: in a rank that ddp_fork/ddp_spawn just
        started, where RANK/WORLD_SIZE/MASTER_* now say what the parent's environment did not."""
        self._environment = None

    world_size = property(lambda self: self.environment.world_size)
    global_rank = property(lambda self: self.environment.global_rank)
    local_rank = property(lambda self: self.environment.local_rank)

    @property
    def root_device(self) -> torch.device:
        if self.device_kind == "cuda":
            return torch.device("cuda", self.environment.local_rank)
        return torch.device("cpu")

    @property
    def needs_launch(self) -> bool:
        """Several processes were asked for, but this one was not started by a launcher: the
        Trainer starts the workers itself (through torch's elastic launcher)."""
        return self.environment.kind == "single" and self.requested_processes > 1

    def setup(self) -> None:
        """Join (or start) the default process group; nothing when this process only launches workers."""
        env = self.environment
        if self.needs_launch:
            return
        if self.device_kind == "cuda":
            torch.cuda.set_device(self.root_device)
        share_cpu_threads(env.local_world_size)
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", env.main_address)
            os.environ.setdefault("MASTER_PORT", str(env.main_port))
            _import_before_the_group()
            store = _group_store(env, self.timeout, ProcessGroup.groups_created)
            dist.init_process_group(self.backend, rank=env.global_rank, world_size=env.world_size,
                                    timeout=self.timeout, store=store)
            ProcessGroup.groups_created += 1
            self._created_group = True
            # destroy the group before interpreter shutdown: gloo's threads abort the process otherwise
            atexit.register(destroy_process_group)
        elif dist.get_world_size() != env.world_size:
            raise RuntimeError(f"{self.owner}: a process group of size {dist.get_world_size()} already exists, but "
                               f"the environment says WORLD_SIZE={env.world_size}.")

    # -- collectives -------------------------------------------------------------------------------
    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in _OPS:
            raise ValueError(f"reduce(op={op!r}): expected one of {sorted(_OPS)}.")
        out = tensor.detach().clone()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS[op]))
        return out / self.world_size if op == "mean" else out

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def barrier(self, name: str | None = None) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def explain_failure(self, err: BaseException) -> BaseException | None:
        """A clearer error for ``err`` when it is a failed collective (another rank died or hung), else None."""
        from .failures import explain_collective_failure, is_collective_failure

        if self.world_size < 2 or not dist.is_initialized() or not is_collective_failure(err):
            return None
        return explain_collective_failure(err, self.global_rank, self.world_size, self.timeout)

    def teardown(self) -> None:
        if self._created_group and dist.is_initialized():
            destroy_process_group()
            self._created_group = False
