"""Accelerate's constructor arguments, read once: what the Accelerator supports becomes plain
settings and its strategy object (``build_strategy``), and what it does not is refused by name with
the reason (never silently ignored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.accelerate.plugins import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration
from trainer.engine.script_launch import apply_launch_settings, launch_settings
from trainer.strategies import Strategy, resolve_strategy

# argument -> why it is refused and what to do instead
_REFUSED = {
    "split_batches": "it moved to DataLoaderConfiguration. Pass dataloader_config=DataLoaderConfiguration("
                     "split_batches=True)",
    "torch_tp_plugin": "tensor parallelism is not supported. Use fsdp_plugin=FullyShardedDataParallelPlugin(...) "
                       "or deepspeed_plugin=DeepSpeedPlugin(zero_stage=3) to fit a large model",
    "megatron_lm_plugin": "Megatron-LM is not supported. Use fsdp_plugin=... or deepspeed_plugin=...",
    "deepspeed_plugins": "one DeepSpeed configuration per Accelerator. Pass deepspeed_plugin=DeepSpeedPlugin(...)",
    "parallelism_config": "only data parallelism (DDP, FSDP, DeepSpeed ZeRO) is supported. Use fsdp_plugin=... or "
                          "deepspeed_plugin=...",
    "rng_types": "random states are not re-synchronised between processes each epoch: shuffling is seeded "
                 "explicitly (set_seed, DataLoaderConfiguration(use_seedable_sampler=True, data_seed=...)). "
                 "Drop the argument",
    "kwargs_handlers": "handler objects are not read. Configure DDP with strategy=DDPStrategy("
                       "find_unused_parameters=..., timeout=...), the scaler through mixed_precision",
    "dynamo_backend": "compile the model yourself with torch.compile(model) before accelerator.prepare(model)",
    "dynamo_plugin": "compile the model yourself with torch.compile(model) before accelerator.prepare(model)",
}


@dataclass
class AcceleratorArgs:
    """The settings the Accelerator keeps from its constructor arguments."""

    gradient_accumulation: GradientAccumulationPlugin | None
    dataloader: DataLoaderConfiguration
    project: ProjectConfiguration


def read_accelerate_args(gradient_accumulation_steps: int | None, gradient_accumulation_plugin: Any,
                         dataloader_config: Any, project_dir: str | None, project_config: Any,
                         refusable: dict[str, Any]) -> AcceleratorArgs:
    """Check Accelerate's arguments; raise for the ones this framework does not implement."""
    for name, value in refusable.items():
        if value is not None and not (name == "kwargs_handlers" and not value) \
                and not (name == "dynamo_backend" and str(value).lower() == "no"):
            raise ValueError(f"Accelerator({name}={value!r:.80}): not supported: {_REFUSED[name]}.")
    if gradient_accumulation_plugin is not None:
        if not isinstance(gradient_accumulation_plugin, GradientAccumulationPlugin):
            raise TypeError(f"Accelerator(gradient_accumulation_plugin={gradient_accumulation_plugin!r:.80}): expected "
                            "a trainer.GradientAccumulationPlugin(num_steps=...).")
        if gradient_accumulation_steps not in (None, 1):
            raise ValueError(f"Accelerator(gradient_accumulation_steps={gradient_accumulation_steps}, "
                             "gradient_accumulation_plugin=...): give the number of steps in one place only (the "
                             "plugin's num_steps).")
    dataloader_config = DataLoaderConfiguration() if dataloader_config is None else dataloader_config
    if not isinstance(dataloader_config, DataLoaderConfiguration):
        raise TypeError(f"Accelerator(dataloader_config={dataloader_config!r:.80}): expected a "
                        "trainer.DataLoaderConfiguration(...).")
    if project_config is None:
        project_config = ProjectConfiguration(project_dir=project_dir)
    elif not isinstance(project_config, ProjectConfiguration):
        raise TypeError(f"Accelerator(project_config={project_config!r:.80}): expected a "
                        "trainer.ProjectConfiguration(...).")
    elif project_dir is not None:
        project_config.set_directories(project_dir)
    return AcceleratorArgs(gradient_accumulation_plugin, dataloader_config, project_config)


def build_strategy(strategy: Any, devices: Any, mixed_precision: Any, accumulation: Any, cpu: bool,
                   deepspeed_plugin: Any, fsdp_plugin: Any) -> tuple[Strategy, int]:
    """The strategy from the arguments, the launcher's settings and the config file."""
    given = {"mixed_precision": mixed_precision, "gradient_accumulation_steps": accumulation,
             "strategy": None if strategy == "auto" else strategy, "accelerator": "cpu" if cpu else None}
    # a Strategy object is already resolved (e.g. by the Trainer, which applied the launch settings)
    launched = given if isinstance(strategy, Strategy) else apply_launch_settings("Accelerator", given)
    mixed_precision, strategy = launched["mixed_precision"], launched["strategy"] or "auto"
    accumulation = launched["gradient_accumulation_steps"]
    accumulation = 1 if accumulation is None else accumulation
    cpu = launched["accelerator"] == "cpu"
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        raise ValueError(f"Accelerator(gradient_accumulation_steps={accumulation!r}): "
                         "expected a positive int (1 means no accumulation).")
    options = None
    if deepspeed_plugin is not None and fsdp_plugin is not None:
        raise ValueError("Accelerator(deepspeed_plugin=..., fsdp_plugin=...): pick one sharded strategy.")
    if deepspeed_plugin is not None:
        strategy = deepspeed_plugin.strategy(mixed_precision, accumulation)
    elif fsdp_plugin is not None:
        if strategy not in ("auto", "fsdp"):
            raise ValueError(f"Accelerator(strategy={strategy!r}, fsdp_plugin=...): the plugin configures FSDP; "
                             "drop strategy= or set strategy='fsdp'.")
        strategy, options = "fsdp", fsdp_plugin.options()
    elif isinstance(strategy, str):
        options = launch_settings().get(strategy)  # the config file's section (e.g. fsdp options)
    resolved = resolve_strategy(strategy, accelerator="cpu" if cpu else launched["accelerator"] or "auto",
                                devices=devices, precision=mixed_precision, options=options)
    return resolved, accumulation


def _numbered_checkpoints(root: str) -> list[tuple[int, str]]:
    import os
    import re

    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root)
             if (m := re.fullmatch(r"checkpoint_(\d+)", name))]
    return sorted(found)


def next_checkpoint_dir(project: ProjectConfiguration) -> str:
    """``save_state()`` without a directory: ``project_dir/checkpoints/checkpoint_<iteration>``, after
    deleting the oldest automatic checkpoints beyond ``total_limit``."""
    import os
    import shutil

    if not project.automatic_checkpoint_naming or project.project_dir is None:
        raise ValueError("accelerator.save_state(): no output_dir given. Pass one, or construct the Accelerator with "
                         "project_config=ProjectConfiguration(project_dir=..., automatic_checkpoint_naming=True).")
    root = os.path.join(project.project_dir, "checkpoints")
    target = os.path.join(root, f"checkpoint_{project.iteration}")
    if os.path.exists(target):
        raise ValueError(f"accelerator.save_state(): {target!r} exists already and is never overwritten. Set "
                         "accelerator.project_configuration.iteration to the next free number (load_state() without "
                         "a directory does this for you).")
    existing = _numbered_checkpoints(root)
    if project.total_limit is not None:
        for _, old in existing[:max(0, len(existing) + 1 - project.total_limit)]:
            shutil.rmtree(old)
    return target


def newest_checkpoint_dir(project: ProjectConfiguration) -> str:
    """``load_state()`` without a directory: the highest-numbered automatic checkpoint."""
    import os

    if not project.automatic_checkpoint_naming or project.project_dir is None:
        raise ValueError("accelerator.load_state(): no input_dir given. Pass one, or construct the Accelerator with "
                         "project_config=ProjectConfiguration(project_dir=..., automatic_checkpoint_naming=True).")
    found = _numbered_checkpoints(os.path.join(project.project_dir, "checkpoints"))
    if not found:
        raise FileNotFoundError(f"accelerator.load_state(): no checkpoint_<n> directory under "
                                f"{os.path.join(project.project_dir, 'checkpoints')!r} to resume from.")
    project.iteration = found[-1][0] + 1  # the next automatic save goes after it
    return found[-1][1]
