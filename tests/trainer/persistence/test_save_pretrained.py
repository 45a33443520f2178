"""Hugging Face models: ``trainer.save_model(dir, module=...)`` and ``accelerator.save_model`` write
what ``from_pretrained(dir)`` loads -- with a tiny stand-in that follows the ``save_pretrained`` /
``config.json`` protocol, and with a real (tiny, randomly initialised) transformers model when
transformers is installed (it is not in the dev extra: about 150 MB with its dependencies)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from tests.trainer.accelerator.test_accelerator_drop_in import _TinyPretrained


class Wrapper(TrainModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.head = torch.nn.Identity()

    def training_step(self, batch, batch_idx):
        (x,) = batch
        out = self.net(x) if not hasattr(self.net, "transformer") else self.net(input_ids=x).logits
        return out.float().pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: TrainModule, data: torch.Tensor) -> Trainer:
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(data), batch_size=2))
    return trainer


def test_trainer_save_model_exports_a_named_submodule_through_save_pretrained(tmp_path):
    module = Wrapper(_TinyPretrained())
    trainer = _fit(module, torch.randn(4, 3))
    assert trainer.save_model(str(tmp_path / "hf"), module="net") == ["config.json", "model.safetensors"]
    loaded = _TinyPretrained.from_pretrained(str(tmp_path / "hf"))
    assert torch.equal(loaded.proj.weight, module.net.proj.weight)  # keys without the wrapper's "net." prefix
    trainer.save_model(str(tmp_path / "obj"), module=module.net)
    assert os.path.exists(tmp_path / "obj" / "config.json")


def test_save_model_names_a_missing_or_foreign_submodule(tmp_path):
    trainer = _fit(Wrapper(_TinyPretrained()), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"module='model'\): Wrapper has no submodule.*\['net', 'head'\]"):
        trainer.save_model(str(tmp_path / "x"), module="model")
    with pytest.raises(ValueError, match=r"module=Linear\(\.\.\.\)\): that module is not part of the trained Wrapper"):
        trainer.save_model(str(tmp_path / "x"), module=torch.nn.Linear(1, 1))


@pytest.mark.slow
def test_a_real_transformers_model_round_trips_through_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    module = Wrapper(transformers.GPT2LMHeadModel(config))
    trainer = _fit(module, torch.randint(0, 32, (4, 6)))
    trainer.save_model(str(tmp_path / "gpt"), module="net")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "gpt"))
    for name, value in module.net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
