"""``trainer.fit(torch.compile(model))``: a small language model, in Lightning's idiom, passed
through torch.compile. The loop runs the compiled forward; hooks and checkpoints see the original
module (no ``_orig_mod.`` keys); checkpoints move between compiled and uncompiled runs; weights
equal a plain PyTorch loop, in one process and in two DDP processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainer import TrainModule
from trainer.callbacks import Callback
from trainer.strategies.checkpoint_io import atomic_save, safe_load
from tests.helpers.distributed import run_distributed, trainer_order
from tests.helpers.trainers import LEAN, quiet_trainer

TEXT = "the quick brown fox jumps over the lazy dog; " * 6
VOCAB = sorted(set(TEXT))
CTX = 8


def _tokens() -> TensorDataset:
    ids = torch.tensor([VOCAB.index(c) for c in TEXT])
    windows = ids.unfold(0, CTX + 1, CTX)[:16]
    return TensorDataset(windows[:, :-1], windows[:, 1:])


class TinyLM(TrainModule):
    """One causal self-attention block and a head over characters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(len(VOCAB), 16)
        self.pos = nn.Parameter(torch.randn(CTX, 16) * 0.1)
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, len(VOCAB))
        self.hook_calls = 0

    def forward(self, idx):
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return self.head(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x).flatten(0, 1), y.flatten())
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x).flatten(0, 1), y.flatten()))

    def on_train_epoch_start(self):
        self.hook_calls += 1  # runs on the original module

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


class Counting:
    """A torch.compile backend that runs the captured graph as it is (eager numerics) and counts
    how often the compiled code runs."""

    def __init__(self):
        self.compiles = self.runs = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)

        return run


def _reference(batch_size: int, epochs: int, distributed_order: bool = False) -> list[list]:
    """A plain loop; ``distributed_order``: over the order the Trainer deals on several processes."""
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    data = _tokens()
    loader = DataLoader(data, batch_size=batch_size, sampler=trainer_order(data) if distributed_order else None)
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
    return _weights(model)


def _weights(model) -> list[list]:
    return [p.detach().tolist() for p in model.parameters()]


def _assert_close(got, want, atol=1e-6):
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=atol, rtol=0)


def test_fit_runs_the_compiled_forward_and_equals_a_plain_loop(make_trainer):
    torch._dynamo.reset()
    backend = Counting()
    model = TinyLM()
    compiled = torch.compile(model, backend=backend)
    trainer = make_trainer(max_epochs=2, **LEAN)
    trainer.fit(compiled, DataLoader(_tokens(), batch_size=4), DataLoader(_tokens(), batch_size=4))
    _assert_close(_weights(model), _reference(batch_size=4, epochs=2))
    assert backend.compiles >= 1
    assert backend.runs == 2 * 4 + 2 * 4  # every training and validation forward ran compiled code
    assert trainer.module is model and model.hook_calls == 2  # hooks ran on the original module
    assert "forward" in vars(model)  # as in Lightning, the module keeps its compiled forward
    runs = backend.runs
    trainer.validate(compiled, DataLoader(_tokens(), batch_size=4))
    assert backend.runs == runs + 4


@pytest.mark.slow  # four compiles: ~20 s
@pytest.mark.timeout(300)
def test_checkpoints_of_a_compiled_run_have_plain_keys_and_resume_either_way(tmp_path, make_trainer):
    """compiled -> uncompiled and uncompiled -> compiled resumes both end with the weights of an
    uninterrupted run."""
    loader = lambda: DataLoader(_tokens(), batch_size=4)
    whole = TinyLM()
    make_trainer(max_epochs=2, **LEAN).fit(whole, loader())

    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                trainer.save_checkpoint(str(tmp_path / "step3.ckpt"))

    for first_compiled in (True, False):
        torch._dynamo.reset()
        first = TinyLM()
        make_trainer(max_epochs=1, callbacks=[SaveAt()], **LEAN).fit(
            torch.compile(first, backend=Counting()) if first_compiled else first, loader())
        ckpt = safe_load(str(tmp_path / "step3.ckpt"))
        assert not any(k.startswith("_orig_mod.") for k in ckpt["state_dict"])
        TinyLM().load_state_dict(ckpt["state_dict"])  # a plain module takes it as it is
        second = TinyLM()
        make_trainer(max_epochs=2, **LEAN).fit(second if first_compiled else torch.compile(second, backend=Counting()),
                                   loader(), ckpt_path=str(tmp_path / "step3.ckpt"))
        _assert_close(_weights(second), _weights(whole))


def test_a_state_dict_saved_from_the_compiled_wrapper_loads_too(tmp_path, make_trainer):
    """A checkpoint whose weights came from `compiled.state_dict()` (keys `_orig_mod.*`)."""
    model = TinyLM()
    trainer = make_trainer(max_epochs=1, max_steps=2, **LEAN)
    trainer.fit(model, DataLoader(_tokens(), batch_size=4))
    trainer.save_checkpoint("plain.ckpt")
    ckpt = safe_load("plain.ckpt")
    ckpt["state_dict"] = torch.compile(model, backend=Counting()).state_dict()
    assert all(k.startswith("_orig_mod.") for k in ckpt["state_dict"])
    atomic_save(ckpt, "prefixed.ckpt")
    resumed = TinyLM()
    make_trainer(max_epochs=1, max_steps=2, **LEAN).fit(resumed, DataLoader(_tokens(), batch_size=4),
                                                        ckpt_path="prefixed.ckpt")
    _assert_close(_weights(resumed), _weights(model))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_default_inductor_compile_equals_a_plain_loop(make_trainer):
    """torch.compile(model) as users write it (inductor generates C++ on CPU)."""
    torch._dynamo.reset()
    model = TinyLM()
    make_trainer(max_epochs=2, **LEAN).fit(torch.compile(model), DataLoader(_tokens(), batch_size=4))
    _assert_close(_weights(model), _reference(batch_size=4, epochs=2), atol=1e-5)


def _ddp_compiled_worker():
    backend = Counting()
    model = TinyLM()
    trainer = quiet_trainer(max_epochs=2, **LEAN)
    trainer.fit(torch.compile(model, backend=backend), DataLoader(_tokens(), batch_size=2))
    assert trainer.world_size == 2 and trainer.module is model
    return {"weights": _weights(model), "runs": backend.runs}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_compiled_model_under_two_ddp_processes_equals_one_process():
    ranks = run_distributed(_ddp_compiled_worker, world_size=2)
    want = _reference(batch_size=4, epochs=2, distributed_order=True)  # the ranks read the data shuffled
    for rank in ranks:
        assert rank["runs"] == 2 * 4  # each rank ran its 4 batches per epoch through compiled code
        _assert_close(rank["weights"], want)
