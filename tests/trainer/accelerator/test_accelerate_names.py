"""Every public name of Accelerate's main modules imports from the matching ``trainer`` module
(``accelerate.utils.X`` -> ``trainer.utils.X``, ...) unless it is listed below, with the reason we
deliberately do not have it. The walk reads the installed accelerate package (a dev dependency), so
a new Accelerate name fails here until it is implemented or listed."""

from __future__ import annotations

import importlib
import types
import warnings

import pytest

pytest.importorskip("accelerate")

MODULES = ["accelerate", "accelerate.utils", "accelerate.state", "accelerate.logging", "accelerate.data_loader",
           "accelerate.local_sgd"]

# reason -> the names (in any of MODULES) it covers
LACKING_BY_REASON = {
    "kwargs_handlers are refused: configure DDP, the process group and the scaler on the strategy "
    "(DDPStrategy(find_unused_parameters=..., timeout=...), mixed_precision=...); profile with trainer's profiler":
        "AutocastKwargs DDPCommunicationHookType DistributedDataParallelKwargs GradScalerKwargs "
        "InitProcessGroupKwargs ProfileKwargs KwargsHandler AORecipeKwargs TERecipeKwargs",
    "big-model inference (device maps, offloading, meta-device init) is not provided: shard a large model "
    "with FSDP or DeepSpeed ZeRO-3":
        "cpu_offload cpu_offload_with_hook disk_offload dispatch_model infer_auto_device_map init_empty_weights "
        "init_on_device load_checkpoint_and_dispatch OffloadedWeightsLoader PrefixedDataset align_module_device "
        "calculate_maximum_sizes check_device_map check_tied_parameters_in_config "
        "check_tied_parameters_on_same_device compute_module_sizes dtype_byte_size extract_submodules_state_dict "
        "find_tied_parameters get_balanced_memory get_max_layer_size get_max_memory get_module_children_bottom_up "
        "has_offloaded_params id_tensor_storage load_offloaded_weight load_offloaded_weights load_state_dict "
        "named_module_tensors offload_state_dict offload_weight retie_parameters save_offload_index "
        "set_module_tensor_to_device ensure_weights_retied clean_state_dict_for_safetensors CustomDtype "
        "convert_file_size_to_int",
    "only data parallelism (DDP, FSDP2, DeepSpeed ZeRO): no tensor, context or sequence parallelism":
        "ParallelismConfig TorchContextParallelConfig TorchTensorParallelConfig TorchTensorParallelPlugin "
        "get_model_tp_size DeepSpeedSequenceParallelConfig",
    "Megatron-LM is not supported":
        "AbstractTrainStep BertTrainStep GPTTrainStep T5TrainStep MegatronLMDummyDataLoader "
        "MegatronLMDummyScheduler MegatronLMPlugin add_model_config_to_megatron_parser "
        "avg_losses_across_data_parallel_group is_megatron_lm_available",
    "DeepSpeed runs through DeepSpeedPlugin/DeepSpeedStrategy with a torch optimizer passed to prepare; "
    "Accelerate's engine wrappers and config-only optimizers are internals":
        "DeepSpeedEngineWrapper DeepSpeedOptimizerWrapper DeepSpeedSchedulerWrapper DummyOptim DummyScheduler "
        "HfDeepSpeedConfig GatheredParameters get_active_deepspeed_plugin map_pytorch_optim_to_deepspeed "
        "deepspeed_required compile_regions_deepspeed prepare_deepspeed_cmd_env",
    "FSDP internals: save_state/load_state, get_state_dict and `trainer merge-weights` cover them":
        "fsdp2_apply_ac fsdp2_canonicalize_names fsdp2_load_full_state_dict fsdp2_prepare_model "
        "fsdp2_switch_optimizer_parameters load_fsdp_model load_fsdp_optimizer save_fsdp_model save_fsdp_optimizer "
        "merge_fsdp_weights disable_fsdp_ram_efficient_loading enable_fsdp_ram_efficient_loading "
        "get_fsdp2_grad_scaler model_has_dtensor compile_regions_fsdp2",
    "fp8 training and quantization (bitsandbytes, torchao, Transformer Engine) are not provided":
        "BnbQuantizationConfig apply_fp8_autowrap contextual_fp8_autocast convert_model convert_model_to_fp8_ao "
        "filter_first_and_last_linear_layers has_4bit_bnb_layers has_ao_layers has_transformer_engine_layers "
        "is_4bit_bnb_available is_8bit_bnb_available is_bnb_available is_bitsandbytes_multi_backend_available "
        "load_and_quantize_model torchao_required is_torchao_available is_transformer_engine_available "
        "is_transformer_engine_mxfp8_available check_cuda_fp8_capability",
    "save_state writes one state.ckpt per directory (atomically): Accelerate's per-object file names are not used":
        "MODEL_NAME OPTIMIZER_NAME RNG_STATE_NAME SAFE_MODEL_NAME SAFE_WEIGHTS_INDEX_NAME SAFE_WEIGHTS_NAME "
        "SAFE_WEIGHTS_PATTERN_NAME SAMPLER_NAME SCALER_NAME SCHEDULER_NAME WEIGHTS_INDEX_NAME WEIGHTS_NAME "
        "WEIGHTS_PATTERN_NAME PROFILE_PATTERN_NAME",
    "internals of the `accelerate` command and of hardware we do not drive (SageMaker, TPU, HPU, ROCm probes): "
    "`trainer launch` / `trainer config` / `trainer env` do this":
        "ComputeEnvironment PrepareForLaunch SageMakerDistributedType TORCH_LAUNCH_PARAMS prepare_multi_gpu_env "
        "prepare_sagemager_args_inputs prepare_simple_launcher_cmd_env prepare_tpu purge_accelerate_environment "
        "write_basic_config convert_dict_to_env_variables install_xla is_sagemaker_available "
        "get_cpu_distributed_information get_distributed_backend check_os_kernel set_numa_affinity "
        "check_cuda_p2p_ib_support get_gpu_info is_habana_gaudi1 is_rocm_available is_xccl_available "
        "is_amdsmi_available is_pynvml_available get_current_device_type get_accelerator_free_memory "
        "normalize_device are_libraries_initialized",
    "compilation is the user's torch.compile(model) before prepare (dynamo_backend is refused)":
        "DynamoBackend TorchDynamoPlugin compile_regions has_compiled_regions is_compiled_module",
    "building blocks of Accelerate's own operations (its debug mode, its dispatcher); ours are not public":
        "CannotPadNestedTensorWarning TORCH_DISTRIBUTED_OPERATION_TYPES TensorInformation concatenate "
        "convert_outputs_to_fp32 convert_to_fp32 copy_tensor_to_devices find_device get_data_structure honor_type "
        "ignorant_find_batch_size initialize_tensors is_tensor_information pad_input_tensors recursively_apply "
        "slice_tensors recursive_getattr",
    "integrations with these packages are not provided (no tracker, optimizer or loader for them)":
        "is_boto3_available is_import_timer_available is_lomo_available is_schedulefree_available "
        "is_swanlab_available is_trackio_available is_triton_available is_torchdata_stateful_dataloader_available",
    "the precision plugin owns the scaler and autocast: use accelerator.autocast() and mixed_precision=":
        "get_grad_scaler get_mixed_precision_context_manager",
    "PEFT models are prepared like any module; nothing PEFT-specific is needed": "is_peft_model",
    "the machinery of Accelerate's process-wide shared state; here every Accelerator owns its state":
        "ThreadLocalSharedDict do_nothing is_initialized",
    "Accelerate's bases of its stateful loader wrappers; here use_stateful_dataloader=True keeps torchdata's "
    "StatefulDataLoader inside the prepared loader, whose state_dict holds its position":
        "DataLoaderAdapter DataLoaderStateMixin",
    "an IterableDataset is read by process 0 and dispatched (DataLoaderDispatcher), not sharded per process":
        "IterableDatasetShard",
    "skip_first_batches rebuilds the loader around the same (batch) sampler; these wrapper classes are "
    "Accelerate's internals": "SkipBatchSampler SkipDataLoader get_sampler",
}
LACKING = {name: reason for reason, names in LACKING_BY_REASON.items() for name in names.split()}


def accelerate_public_names(module_name: str) -> list[str]:
    """The names a user imports from ``module_name``: for ``accelerate`` and ``accelerate.utils``
    (whose ``__init__`` is the public list) every function, class and constant they export; for the
    other modules the functions and classes defined there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        owner = getattr(value, "__module__", None) or ""
        is_code = callable(value) or isinstance(value, type)
        if module_name in ("accelerate", "accelerate.utils"):
            if is_code and not owner.startswith("accelerate"):
                continue  # e.g. a torch function imported for use
            if not is_code and module_name == "accelerate":
                continue
        elif owner != module_name:
            continue
        names.append(name)
    return sorted(names)


@pytest.mark.parametrize("module_name", MODULES)
def test_every_accelerate_name_is_ours_or_listed_with_its_reason(module_name):
    ours = importlib.import_module(module_name.replace("accelerate", "trainer", 1))
    missing = [n for n in accelerate_public_names(module_name) if not hasattr(ours, n) and n not in LACKING]
    assert not missing, (f"{module_name} exports {missing}, which {ours.__name__} lacks: implement them or list them "
                         "in LACKING_BY_REASON with the reason")


def test_the_list_of_lacking_names_is_current():
    """A listed name must still be Accelerate's and still be missing here (else its entry is stale)."""
    everywhere = {n for m in MODULES for n in accelerate_public_names(m)}
    assert sorted(set(LACKING) - everywhere) == [], "listed names Accelerate no longer exports"
    implemented = [n for n in LACKING for m in MODULES
                   if n in accelerate_public_names(m) and hasattr(importlib.import_module(m.replace("accelerate",
                                                                                                   "trainer", 1)), n)]
    assert implemented == [], f"listed as lacking but implemented: {implemented}"


@pytest.mark.parametrize("path", ["trainer.DistributedType", "trainer.PartialState", "trainer.notebook_launcher",
                                  "trainer.skip_first_batches", "trainer.utils.DataLoaderConfiguration",
                                  "trainer.utils.ProjectConfiguration", "trainer.utils.GradientAccumulationPlugin",
                                  "trainer.utils.synchronize_rng_states", "trainer.utils.save",
                                  "trainer.state.AcceleratorState", "trainer.state.GradientState",
                                  "trainer.logging.get_logger", "trainer.data_loader.prepare_data_loader",
                                  "trainer.data_loader.SeedableRandomSampler", "trainer.local_sgd.LocalSGD"])
def test_names_hugging_face_scripts_import(path):
    module, name = path.rsplit(".", 1)
    accelerate_module = importlib.import_module(module.replace("trainer", "accelerate", 1))
    assert hasattr(accelerate_module, name), f"{path}: not an Accelerate name any more"
    assert hasattr(importlib.import_module(module), name), f"{path} does not import"
