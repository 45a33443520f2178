"""Accelerate-style configuration objects for the sharded strategies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FullyShardedDataParallelPlugin:
    """FSDP settings with the names Accelerate users know; ``Accelerator(fsdp_plugin=...)`` trains with
    ``strategies.FSDPStrategy`` (FSDP2) built from them.

    Args:
        sharding_strategy: "FULL_SHARD", "SHARD_GRAD_OP" (keep gathered parameters from forward to
            backward) or "HYBRID_SHARD" (shard within a machine, replicate across machines).
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory.
        auto_wrap_policy: "transformer" (the classes named in ``transformer_cls_names_to_wrap``),
            "size" (``min_num_params``) or "none" (only the root is sharded).
        transformer_cls_names_to_wrap: class names, e.g. ``["GPT2Block"]``.
        min_num_params: the size policy's threshold.
        activation_checkpointing: recompute the wrapped blocks' activations in backward.
        state_dict_type: "SHARDED_STATE_DICT" (save_state writes each rank's shards) or
            "FULL_STATE_DICT" (``get_state_dict`` gathers on rank zero; save_state still shards).
    """

    sharding_strategy: str = "FULL_SHARD"
    cpu_offload: bool = False
    auto_wrap_policy: str = "size"
    transformer_cls_names_to_wrap: list[str] = field(default_factory=list)
    min_num_params: int = 100_000_000
    activation_checkpointing: bool = False
    state_dict_type: str = "SHARDED_STATE_DICT"

    def __post_init__(self) -> None:
        from trainer.strategies.fsdp import AUTO_WRAP_POLICIES, SHARDING_STRATEGIES

        if self.sharding_strategy not in SHARDING_STRATEGIES:
            raise ValueError(f"FullyShardedDataParallelPlugin(sharding_strategy={self.sharding_strategy!r}): expected "
                             f"one of {', '.join(SHARDING_STRATEGIES)}.")
        if self.auto_wrap_policy not in AUTO_WRAP_POLICIES:
            raise ValueError(f"FullyShardedDataParallelPlugin(auto_wrap_policy={self.auto_wrap_policy!r}): expected "
                             f"one of {', '.join(AUTO_WRAP_POLICIES)}.")
        if self.auto_wrap_policy == "transformer" and not self.transformer_cls_names_to_wrap:
            raise ValueError("FullyShardedDataParallelPlugin(auto_wrap_policy='transformer') needs "
                             "transformer_cls_names_to_wrap, e.g. ['Block'].")
        if self.state_dict_type not in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
            raise ValueError(f"FullyShardedDataParallelPlugin(state_dict_type={self.state_dict_type!r}): expected "
                             "'SHARDED_STATE_DICT' or 'FULL_STATE_DICT'.")

    def options(self) -> dict[str, Any]:
        """As the config file's ``fsdp`` section."""
        return {"sharding_strategy": self.sharding_strategy, "cpu_offload": self.cpu_offload,
                "auto_wrap_policy": self.auto_wrap_policy,
                "transformer_layer_cls": ",".join(self.transformer_cls_names_to_wrap) or None,
                "min_num_params": self.min_num_params, "activation_checkpointing": self.activation_checkpointing}


@dataclass
class DeepSpeedPlugin:
    """DeepSpeed ZeRO settings with Accelerate's names; ``Accelerator(deepspeed_plugin=...)`` trains with
    ``strategies.DeepSpeedStrategy`` built from them.

    Args:
        zero_stage: 0-3.
        gradient_accumulation_steps: micro-batches per optimizer step.
        gradient_clipping: clip the gradient norm at this value (None: no clipping).
        offload_optimizer_device: "none" or "cpu" (ZeRO stage 1 or more).
        offload_param_device: "none" or "cpu" (ZeRO stage 3).
        hf_ds_config: a DeepSpeed config dict or the path of its JSON file.
    """

    zero_stage: int = 2
    gradient_accumulation_steps: int = 1
    gradient_clipping: float | None = None
    offload_optimizer_device: str = "none"
    offload_param_device: str = "none"
    hf_ds_config: Any = None

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"DeepSpeedPlugin(zero_stage={self.zero_stage!r}): expected 0, 1, 2 or 3.")
        for name in ("offload_optimizer_device", "offload_param_device"):
            if getattr(self, name) not in ("none", "cpu"):
                raise ValueError(f"DeepSpeedPlugin({name}={getattr(self, name)!r}): expected 'none' or 'cpu'.")
        if self.offload_param_device == "cpu" and self.zero_stage != 3:
            raise ValueError(f"DeepSpeedPlugin(offload_param_device='cpu', zero_stage={self.zero_stage}): parameters "
                             "can only be offloaded with ZeRO stage 3. Set zero_stage=3 or offload_param_device='none'.")
        if self.offload_optimizer_device == "cpu" and self.zero_stage == 0:
            raise ValueError("DeepSpeedPlugin(offload_optimizer_device='cpu', zero_stage=0): optimizer offload needs "
                             "ZeRO stage 1 or more. Set zero_stage to 1, 2 or 3.")

    def strategy(self, mixed_precision: str | None, accumulation: int | None) -> Any:
        """The ``DeepSpeedStrategy`` for these settings and the Accelerator's own arguments."""
        from trainer.strategies import DeepSpeedStrategy

        if accumulation is not None and accumulation != self.gradient_accumulation_steps \
                and self.gradient_accumulation_steps != 1:
            raise ValueError(f"Accelerator(gradient_accumulation_steps={accumulation}) and DeepSpeedPlugin("
                             f"gradient_accumulation_steps={self.gradient_accumulation_steps}) disagree; set the same "
                             "value in both (or only in the Accelerator).")
        precision = "32-true" if mixed_precision is None else mixed_precision
        import torch

        strategy = DeepSpeedStrategy(zero_stage=self.zero_stage, offload_optimizer=self.offload_optimizer_device == "cpu",
                                     offload_parameters=self.offload_param_device == "cpu", config=self.hf_ds_config,
                                     precision=precision, device_kind="cuda" if torch.cuda.is_available() else "cpu")
        strategy.connect(gradient_clip_val=self.gradient_clipping,
                         accumulate_grad_batches=accumulation or self.gradient_accumulation_steps)
        return strategy


@dataclass
class DataLoaderConfiguration:
    """How ``Accelerator.prepare`` shares dataloaders between processes (Accelerate's names).

    Args:
        split_batches: the loader's ``batch_size`` is the global batch, split between the
            processes (it must divide by their number); by default each process draws
            ``batch_size`` samples.
        even_batches: every process gets the same number of batches (the last step is completed
            with the pass's first samples; ``gather_for_metrics`` drops the repeats). ``False``: the
            last processes may run one batch less -- for evaluation loaders; training on one is
            refused outside ``join_uneven_inputs`` (every backward is a collective, so a process
            with more batches would wait forever).
        use_seedable_sampler: shuffle with a sampler seeded by ``data_seed`` (or the seed given to
            ``set_seed``) and the epoch, so the order is the same on every process and every run,
            one process included.
        data_seed: the seed of the seedable sampler.
        non_blocking: copy batches to the GPU asynchronously (always done for CUDA here).
        dispatch_batches: the main process reads the loader and sends each process its share of
            every step (the others never read the dataset). Defaults to True for an
            ``IterableDataset`` (which cannot be dealt by index), False otherwise.
        use_stateful_dataloader: prepared loaders save their position (torchdata's
            ``StatefulDataLoader``; a plain ``DataLoader`` over an ``IterableDataset`` is rebuilt as one):
            ``save_state`` records where each process's loader is and ``load_state`` puts it back, so
            the next pass reads only what was not trained -- no ``skip_first_batches``. Loaded by
            another number of processes, the rest of the pass is re-dealt over them when the dataset
            follows the sharded-stream protocol (``trainer/data/sharded_stream.py``), and refused
            otherwise. For iterable datasets read by each process (see ``Accelerator.prepare_data_loader``).
    """

    split_batches: bool = False
    dispatch_batches: bool | None = None
    even_batches: bool = True
    use_seedable_sampler: bool = False
    data_seed: int | None = None
    non_blocking: bool = False
    use_stateful_dataloader: bool = False


@dataclass
class GradientAccumulationPlugin:
    """Gradient accumulation settings (Accelerate's names) for ``Accelerator(gradient_accumulation_plugin=...)``.

    Args:
        num_steps: micro-batches per optimizer step.
        adjust_scheduler: prepared schedulers count optimizer steps, not micro-batches (always so
            here; ``False`` warns that it has no effect).
        sync_with_dataloader: the last batch of a prepared dataloader closes the window.
        sync_each_batch: all-reduce gradients on every micro-batch (less memory under FSDP,
            more communication); the optimizer still steps once per window.
    """

    num_steps: int | None = None
    adjust_scheduler: bool = True
    sync_with_dataloader: bool = True
    sync_each_batch: bool = False

    def __post_init__(self) -> None:
        if self.num_steps is None or isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) \
                or self.num_steps < 1:
            raise ValueError(f"GradientAccumulationPlugin(num_steps={self.num_steps!r}): expected a positive int "
                             "(micro-batches per optimizer step).")
        if not self.adjust_scheduler:
            import warnings

            warnings.warn("GradientAccumulationPlugin(adjust_scheduler=False) has no effect: a prepared scheduler "
                          "steps only when the optimizer steps (use Accelerator(step_scheduler_with_optimizer=False) "
                          "to step it on every call).", stacklevel=2)


@dataclass
class ProjectConfiguration:
    """Where an Accelerator writes (Accelerate's names), for ``Accelerator(project_config=...)``.

    Args:
        project_dir: the root for checkpoints and logs.
        logging_dir: where trackers write (defaults to ``project_dir``).
        automatic_checkpoint_naming: ``save_state()`` without a directory writes
            ``project_dir/checkpoints/checkpoint_<iteration>``, and ``load_state()`` without one
            reads the newest.
        total_limit: keep at most this many automatic checkpoints (the oldest are deleted).
        iteration: the number of the next automatic checkpoint.
        save_on_each_node: refused when True (checkpoints are written once, by the main process).
    """

    project_dir: str | None = None
    logging_dir: str | None = None
    automatic_checkpoint_naming: bool = False
    total_limit: int | None = None
    iteration: int = 0
    save_on_each_node: bool = False

    def __post_init__(self) -> None:
        if self.logging_dir is None:
            self.logging_dir = self.project_dir
        if self.total_limit is not None and (not isinstance(self.total_limit, int) or self.total_limit < 1):
            raise ValueError(f"ProjectConfiguration(total_limit={self.total_limit!r}): expected a positive int or "
                             "None (keep every checkpoint).")
        if self.save_on_each_node:
            raise ValueError("ProjectConfiguration(save_on_each_node=True): not supported. Checkpoints are written "
                             "once, by the main process, to a filesystem every node reads. Drop the argument.")

    def set_directories(self, project_dir: str | None = None) -> None:
        self.project_dir = project_dir
        if self.logging_dir is None:
            self.logging_dir = project_dir
