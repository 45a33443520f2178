"""``trainer launch``: start a script on as many processes as the config says, through torchrun.

Precedence, highest first: an argument in the user's code, a flag of this command, the config
file, the built-in default. The resolved settings travel to the workers in
``$TRAINER_LAUNCH_SETTINGS`` (JSON), where the Trainer and the Accelerator read them; world
size, ranks and addresses travel the way torchrun sends them (RANK, WORLD_SIZE, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from trainer.cli import config_file
from trainer.cli.config_file import LaunchConfig

HELP = "start a script on as many processes as the config says (through torchrun)"

SETTINGS_ENV = "TRAINER_LAUNCH_SETTINGS"
SAVED_MARKERS_ENV = "TRAINER_SAVED_MARKERS"

# flag -> LaunchConfig field; Accelerate's underscore spellings are accepted too.
_FLAGS = {"num-processes": ("num_processes", int), "num-machines": ("num_machines", int),
          "machine-rank": ("machine_rank", int), "main-process-ip": ("main_process_ip", str),
          "main-process-port": ("main_process_port", int), "mixed-precision": ("mixed_precision", str),
          "strategy": ("strategy", str), "gradient-accumulation-steps": ("gradient_accumulation_steps", int),
          "max-restarts": ("max_restarts", int), "gpu-ids": ("gpu_ids", str), "rdzv-backend": ("rdzv_backend", str),
          "collective-timeout": ("collective_timeout", int)}


# Accelerate's flag -> torchrun's spelling of the same setting (both accepted, also with underscores).
_TORCHRUN_SPELLINGS = {"num-processes": "nproc-per-node", "num-machines": "nnodes", "machine-rank": "node-rank",
                       "main-process-ip": "master-addr", "main-process-port": "master-port"}


def _machines(text: str) -> tuple[int | None, int]:
    """``--num-machines``/``--nnodes``: ``N`` (exactly N machines) or ``MIN:MAX`` (elastic membership)."""
    low, sep, high = text.partition(":")
    try:
        low_n, high_n = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number of machines such as 2, or a range MIN:MAX such as 1:4 (elastic: the run "
            "goes on while at least MIN machines take part)") from None
    return (low_n if sep else None), high_n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)
    parser.add_argument("script", help="the training script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The config-file and override flags (shared with ``trainer test``)."""
    parser.add_argument("--config-file", "--config_file", default=None, help="config file (default: see `trainer config`)")
    for flag, (field, kind) in _FLAGS.items():
        spellings = [flag, *([_TORCHRUN_SPELLINGS[flag]] if flag in _TORCHRUN_SPELLINGS else [])]
        names = dict.fromkeys(f"--{spelled}" for name in spellings for spelled in (name, name.replace("-", "_")))
        parse: Any = _machines if field == "num_machines" else kind
        extra = " (N, or MIN:MAX for elastic membership with the c10d rendezvous)" if parse is _machines else ""
        parser.add_argument(*names, dest=field, type=parse, default=None,
                            help=f"overrides {field} of the config file{extra}")
    parser.add_argument("--rdzv-conf", "--rdzv_conf", default=None, metavar="KEY=VALUE,...",
                        help="torchrun's rendezvous settings, e.g. last_call_timeout=5,keep_alive_interval=1 "
                             "(c10d; added to the ones this command sets)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--multi-gpu", "--multi_gpu", action="store_true", help="train on GPUs (device: gpu)")
    device.add_argument("--cpu", action="store_true", help="train on the CPU (device: cpu)")
    parser.add_argument("--debug", action="store_true",
                        help="check that every rank calls the same collectives (TORCH_DISTRIBUTED_DEBUG=DETAIL): "
                             "a mismatch fails with both ranks' calls named instead of hanging; slower")


def resolve(args: argparse.Namespace, command: str = "trainer launch") -> LaunchConfig:
    """The config file (or the defaults, if there is none) with this command's flags applied."""
    try:
        cfg = config_file.load_config(args.config_file)
    except FileNotFoundError:
        if args.config_file is not None:
            raise
        print(f"{command}: no config file at {config_file.config_path()}; using the defaults "
              "(create one with `trainer config`).", file=sys.stderr)
        cfg = LaunchConfig()
        args.explicit_fields = set()  # only the flags below were chosen: defaults never override code
    overrides: dict[str, Any] = {field: getattr(args, field) for field, _ in _FLAGS.values()
                                 if getattr(args, field, None) is not None}
    if isinstance(overrides.get("num_machines"), tuple):
        overrides["min_machines"], overrides["num_machines"] = overrides["num_machines"]
        if overrides["min_machines"] is not None and "rdzv_backend" not in overrides:
            overrides["rdzv_backend"] = "c10d"  # a range is elastic membership: torchrun's c10d rendezvous
    if args.multi_gpu:
        overrides["device"] = "gpu"
    if args.cpu:
        overrides["device"] = "cpu"
    if getattr(args, "explicit_fields", None) is not None:
        args.explicit_fields |= set(overrides)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def torchrun_args(cfg: LaunchConfig, script: str, script_args: list[str], module: bool = False,
                  rdzv_conf: str | None = None) -> list[str]:
    nnodes = str(cfg.num_machines)
    if cfg.min_machines is not None and cfg.min_machines != cfg.num_machines:
        nnodes = f"{cfg.min_machines}:{cfg.num_machines}"
    args = ["--nnodes", nnodes, "--nproc-per-node", str(cfg.num_processes), "--max-restarts", str(cfg.max_restarts)]
    if cfg.num_machines == 1 and cfg.rdzv_backend == "static":
        args.append("--standalone")  # one machine: torchrun picks a free port itself
    else:
        args += ["--node-rank", str(cfg.machine_rank), "--rdzv-backend", cfg.rdzv_backend,
                 "--master-addr", cfg.main_process_ip, "--master-port", str(cfg.main_process_port)]
        if cfg.rdzv_backend == "c10d":
            args += ["--rdzv-endpoint", f"{cfg.main_process_ip}:{cfg.main_process_port}",
                     "--rdzv-conf", f"timeout={cfg.rdzv_timeout}" + (f",{rdzv_conf}" if rdzv_conf else "")]
    if module:
        args.append("--module")  # `script` is a module name, run as `python -m script`
    return [*args, script, *script_args]


def worker_settings(cfg: LaunchConfig, explicit: set[str] | None = None) -> dict[str, Any]:
    """What the workers' Trainer/Accelerator take from the launch. ``explicit``: the settings a user chose
    (flags, when there is no config file); the others are left unset so the code's own defaults apply."""
    settings = {"mixed_precision": cfg.mixed_precision, "strategy": cfg.strategy, "device": cfg.device,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "num_processes": cfg.num_processes,
                "deepspeed": cfg.deepspeed, "fsdp": cfg.fsdp, "collective_timeout": cfg.collective_timeout}
    if explicit is not None:
        settings = {k: (v if k in explicit or k == "num_processes" else None) for k, v in settings.items()}
    return settings


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):
        print(f"trainer launch: script {args.script!r} not found.", file=sys.stderr)
        return 2
    try:
        cfg = resolve(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"trainer launch: {err}", file=sys.stderr)
        return 2
    return start(cfg, args.script, list(args.script_args), debug=args.debug,
                 explicit=getattr(args, "explicit_fields", None), rdzv_conf=args.rdzv_conf)


def start(cfg: LaunchConfig, script: str, script_args: list[str], command: str = "trainer launch",
          module: bool = False, debug: bool = False, explicit: set[str] | None = None,
          rdzv_conf: str | None = None) -> int:
    """Run ``script`` (a file, or a module name with ``module=True``) under torchrun with the settings of
    ``cfg``; 0 when every worker succeeded. ``rdzv_conf``: torchrun's ``--rdzv-conf`` additions (c10d)."""
    from torch.distributed import run as torchrun

    from trainer.engine.script_launch import (failed_workers_end_the_job, failure_summary, frame_named_rendezvous_events,
                                quiet_stop_notices, slurm_signals_reach_workers)

    if cfg.min_machines is not None and cfg.min_machines < cfg.num_machines and cfg.max_restarts == 0:
        print(f"{command}: elastic ({cfg.min_machines}:{cfg.num_machines} machines) with --max-restarts 0: a machine "
              "that leaves ends the run on the others too. Pass --max-restarts N (e.g. 3) to let them re-form and "
              "go on.", file=sys.stderr)
    if cfg.min_machines is not None and cfg.min_machines < cfg.num_machines:
        # torch (2.4-2.13) shares the rendezvous' TCP store with the workers and keeps rank 0's bootstrap
        # address from the first round: a machine that joins a later round waits for it under the new
        # round's prefix until the timeout (60 s), and the run never grows back. A store per round avoids it.
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ[SETTINGS_ENV] = json.dumps(worker_settings(cfg, explicit))
    if cfg.device == "gpu" and cfg.gpu_ids != "all":
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg.gpu_ids
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if debug:
        os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
    from torch.distributed.elastic.multiprocessing.api import SignalException
    import tempfile

    markers = tempfile.TemporaryDirectory(prefix="trainer-launch-")
    os.environ[SAVED_MARKERS_ENV] = markers.name  # workers that saved on SIGTERM leave a file here
    try:
        # ~0.5 CPU-s of torchrun's own start-up; a failed worker's peers stopped at once (see there)
        with frame_named_rendezvous_events(), failed_workers_end_the_job(markers.name), slurm_signals_reach_workers(), \
                quiet_stop_notices():
            torchrun.main(torchrun_args(cfg, script, script_args, module=module, rdzv_conf=rdzv_conf))
    except SignalException as err:  # Ctrl-C or a scheduler's signal: torchrun has stopped every worker
        import signal

        saved = len(os.listdir(markers.name))
        if err.sigval == signal.SIGTERM and saved >= cfg.num_processes:
            print(f"{command}: stopped by SIGTERM; all {saved} workers saved a checkpoint. Run the same "
                  "command (with fit(ckpt_path='last')) to continue.", file=sys.stderr)
            return 0
        print(f"{command}: stopped by {signal.Signals(err.sigval).name}; every worker process was stopped.",
              file=sys.stderr)
        return 128 + int(err.sigval)
    except Exception as err:  # torchrun's ChildFailedError names the failed rank and its traceback
        print(f"{command}: {type(err).__name__}: {err}", file=sys.stderr)
        summary = failure_summary(markers.name, err)  # the rank that hung or died, from its peers' reports
        if summary is not None:
            print(f"{command}: {summary}", file=sys.stderr)
        return 1
    finally:
        markers.cleanup()
    return 0
