"""``DataModule`` (Lightning's ``LightningDataModule``) and where each stage's dataloaders come from.

A stage's dataloaders come from exactly one place, in this order: the loaders passed to the call,
the ``datamodule=`` passed to it, or the module's own ``*_dataloader()`` methods. They are asked
for after ``prepare_data`` and ``setup(stage)`` ran (and, when resuming, after the checkpoint's
datamodule state was loaded), as in Lightning.
"""

from __future__ import annotations

import inspect
from typing import Any

from trainer.module import AttributeDict, save_hyperparameters

_LOADER_METHOD = {"train": "train_dataloader", "validate": "val_dataloader", "test": "test_dataloader",
                  "predict": "predict_dataloader"}


class DataModule:
    """Everything about the data in one object: download once, split, and build the dataloaders.

    Override what you need: ``prepare_data()`` (runs once per machine, on local rank zero, while the
    other processes wait; do not set state here, it does not run on every process), ``setup(stage)``
    (runs on every process; ``stage`` is "fit", "validate", "test" or "predict"), the four
    ``*_dataloader()`` methods, ``teardown(stage)``, and ``state_dict()``/``load_state_dict()`` (saved
    in the checkpoint and put back on resume).

    Example:
        >>> class Numbers(DataModule):
        ...     def __init__(self, batch_size=8):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...     def setup(self, stage):
        ...         self.data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
        ...     def train_dataloader(self):
        ...         return torch.utils.data.DataLoader(self.data, batch_size=self.hparams.batch_size)
    """

    prepare_data_per_node: bool = True  # False: prepare_data runs once in the whole job (global rank zero)

    def __init__(self) -> None:
        self.trainer: Any = None
        self.hparams = AttributeDict()

    def prepare_data(self) -> None:
        """Download or write data to disk. Called once per machine before ``setup``."""

    def setup(self, stage: str) -> None:
        """Load and split the data on every process."""

    def teardown(self, stage: str) -> None:
        """Clean up after ``stage``."""

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.train_dataloader() is not implemented; fit needs it.")

    def val_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.val_dataloader() is not implemented.")

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.test_dataloader() is not implemented; test needs it.")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.predict_dataloader() is not implemented; predict needs it.")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        from trainer.module import move_to_device

        return move_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def state_dict(self) -> dict[str, Any]:
        """What to save in the checkpoint (plain containers, numbers, strings, tensors)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put back what ``state_dict`` returned."""

    @classmethod
    def from_datasets(cls, train_dataset: Any = None, val_dataset: Any = None, test_dataset: Any = None,
                      predict_dataset: Any = None, batch_size: int = 1, num_workers: int = 0,
                      **loader_kwargs: Any) -> "DataModule":
        """A DataModule serving these datasets (each may be a list of datasets: one loader each);
        the training loader shuffles, the others do not (as Lightning's)."""
        from torch.utils.data import DataLoader, IterableDataset

        def loaders(datasets: Any, shuffle: bool) -> Any:
            def one(ds: Any) -> Any:
                return DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                  shuffle=shuffle and not isinstance(ds, IterableDataset), **loader_kwargs)
            return [one(ds) for ds in datasets] if isinstance(datasets, (list, tuple)) else one(datasets)

        module = cls()
        for kind, datasets in (("train", train_dataset), ("val", val_dataset), ("test", test_dataset),
                               ("predict", predict_dataset)):
            if datasets is not None:
                setattr(module, f"{kind}_dataloader", lambda d=datasets, k=kind: loaders(d, k == "train"))
        return module

    def save_hyperparameters(self, *args: Any, ignore: str | tuple[str, ...] | list[str] = ()) -> None:
        """Store the calling ``__init__``'s arguments in ``self.hparams`` (as ``TrainModule``'s)."""
        self.hparams = save_hyperparameters(self.hparams, args, ignore, inspect.currentframe())


def _overrides(obj: Any, name: str) -> bool:
    """``obj`` defines ``name`` itself (not TrainModule's/DataModule's default)."""
    from trainer.module import TrainModule

    impl = getattr(type(obj), name, None)
    base = DataModule if isinstance(obj, DataModule) else TrainModule
    return impl is not None and impl is not getattr(base, name, None)


def has_loader(owner: Any, kind: str) -> bool:
    """``owner`` (a DataModule or a TrainModule) defines the ``kind`` dataloader method (on its
    class, or on the instance as ``from_datasets`` does)."""
    name = _LOADER_METHOD[kind]
    if owner is None or getattr(owner, name, None) is None:  # `model.val_dataloader = None` switches it off
        return False
    return _overrides(owner, name) or name in vars(owner)


def loaders_from(owner: Any, kind: str) -> Any:
    """The dataloader(s) ``owner.<kind>_dataloader()`` returns (None when it does not define it)."""
    if not has_loader(owner, kind):
        return None
    return getattr(owner, _LOADER_METHOD[kind])()


def check_sources(stage: str, loaders: dict[str, Any], datamodule: Any) -> None:
    """Refuse ambiguous or wrong inputs before anything runs."""
    if datamodule is not None and not isinstance(datamodule, DataModule):
        raise TypeError(f"trainer.{stage}(datamodule={type(datamodule).__name__}(...)): expected a trainer.DataModule. "
                        "Subclass trainer.DataModule (Lightning's LightningDataModule) or pass dataloaders instead.")
    given = [name for name, value in loaders.items() if value is not None]
    if datamodule is not None and given:
        raise ValueError(f"trainer.{stage}({given[0]}=..., datamodule=...): pass either dataloaders or a datamodule, "
                         "not both. Drop one of them (the datamodule's *_dataloader() methods give its loaders).")


def run_prepare_data(trainer: Any, datamodule: Any, module: Any) -> None:
    """``prepare_data`` of the datamodule and the module: once per machine on local rank zero (or once
    per job on global rank zero with ``prepare_data_per_node = False``) while the others wait."""
    owners = [o for o in (datamodule, module) if o is not None and _overrides(o, "prepare_data")]
    if not owners:
        return
    strategy = trainer.accelerator.strategy
    for owner in owners:
        per_node = getattr(owner, "prepare_data_per_node", True)
        if (strategy.local_rank if per_node else strategy.global_rank) == 0:
            owner.prepare_data()
    if strategy.world_size > 1:
        strategy.barrier("prepare_data")


_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def batch_mover(trainer: Any) -> Any:
    """``move(batch, dataloader_idx)``: the strategy's device transfer, or -- when the datamodule or
    the module overrides one of Lightning's batch-transfer hooks -- those hooks in order (the
    datamodule's take precedence over the module's)."""
    accel = trainer.accelerator
    owners = [o for o in (trainer.datamodule, trainer.module) if o is not None]
    chosen = {h: next((getattr(o, h) for o in owners if _overrides(o, h)), None) for h in _TRANSFER_HOOKS}
    if not any(chosen.values()):
        return lambda batch, dataloader_idx=0: accel.batch_to_device(batch)
    before, transfer, after = chosen.values()
    device = accel.strategy.root_device

    def move(batch: Any, dataloader_idx: int = 0) -> Any:
        if before is not None:
            batch = before(batch, dataloader_idx)
        batch = transfer(batch, device, dataloader_idx) if transfer is not None else accel.batch_to_device(batch)
        return after(batch, dataloader_idx) if after is not None else batch
    return move
