"""What users look at: the model summary at fit start and the profilers' output, read back."""

from __future__ import annotations

import glob
import json
import os
import re

import pytest
import torch
from torch import nn

from trainer.callbacks import Callback, CSVLogger, ModelSummary
from trainer.loops.hooks import Hooks
from trainer.profiler import PyTorchProfiler, SimpleProfiler
from tests.helpers.models import BoringModel, regression_loader


class Tower(BoringModel):
    """Two top-level blocks, one nested module, a frozen layer and a parameter of its own."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.layer = nn.Linear(8, 1)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.layer(self.frozen(self.encoder(x))) * self.scale.mean()


def _count(text: str) -> int:
    number, _, unit = text.strip().partition(" ")
    return round(float(number) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[unit])


def _summary_rows(out: str) -> tuple[dict[str, tuple[str, int, str]], dict[str, str]]:
    rows, totals = {}, {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 5 and cells[0].isdigit():
            rows[cells[1]] = (cells[2], _count(cells[3]), cells[4])
        match = re.match(r"^(\S+(?: [KMBT])?)\s+(Trainable params|Non-trainable params|Total params|Total estimated "
                         r"model params size \(MB\)|Params held by .*)$", line)
        if match:
            totals[match.group(2)] = match.group(1)
    return rows, totals


def test_model_summary_is_printed_at_fit_start_and_its_numbers_add_up(capsys, make_trainer):
    model = Tower()
    make_trainer(max_epochs=1, enable_checkpointing=False).fit(model, regression_loader(16, 8))
    rows, totals = _summary_rows(capsys.readouterr().out)
    assert rows == {"encoder": ("Sequential", 4 * 16 + 16 + 16 * 8 + 8, "train"), "frozen": ("Linear", 72, "train"),
                    "layer": ("Linear", 9, "train")}
    total = sum(p.numel() for p in model.parameters())
    assert _count(totals["Total params"]) == total
    assert _count(totals["Non-trainable params"]) == 72
    assert _count(totals["Trainable params"]) + _count(totals["Non-trainable params"]) == total
    assert _count(totals["Params held by Tower itself (not in a layer above)"]) == 3 == \
        total - sum(count for _, count, _ in rows.values())
    assert float(totals["Total estimated model params size (MB)"]) == pytest.approx(total * 4 / 1e6, abs=1e-3)


def test_model_summary_max_depth_and_switching_it_off(capsys, make_trainer):
    make_trainer(max_epochs=1, callbacks=[ModelSummary(max_depth=2)], enable_checkpointing=False).fit(
        Tower(), regression_loader(16, 8))
    rows, _ = _summary_rows(capsys.readouterr().out)
    assert list(rows) == ["layer", "encoder", "encoder.0", "encoder.1", "encoder.2", "frozen"]  # registration order
    assert rows["encoder.1"] == ("ReLU", 0, "train")
    trainer = make_trainer(max_epochs=1, enable_model_summary=False, enable_checkpointing=False)
    assert not any(isinstance(cb, ModelSummary) for cb in trainer.callbacks)
    trainer.fit(Tower(), regression_loader(16, 8))
    assert "Total params" not in capsys.readouterr().out


def test_model_summary_counts_in_readable_units():
    big = nn.Sequential(nn.Linear(1000, 1200), nn.Linear(1200, 1))
    text = ModelSummary().summarize(big)
    assert "1.2 M" in text and "1.2 K" in text and "1.2 M      Total params" in text


def test_bad_model_summary_depth_is_refused():
    with pytest.raises(ValueError, match=r"ModelSummary\(max_depth=-2\): expected an int >= 0, or -1"):
        ModelSummary(max_depth=-2)


def _table(out: str) -> tuple[dict[str, tuple[int, float]], float]:
    rows, total = {}, None
    for line in out.splitlines():
        match = re.match(r"^(.+?)\s+(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", line)
        if match:
            rows[match.group(1)] = (int(match.group(2)), float(match.group(4)))
        match = re.match(r"^Total\s+(\d+\.\d+)\s+100\.00$", line)
        if match:
            total = float(match.group(1))
    return rows, total


class Watch(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.hooks_type = type(trainer.fit_loop.hooks)
        self.shadowed = sorted(vars(trainer.strategy).keys() & {"backward", "optimizer_step", "zero_grad"})
        self.engine_profiler = trainer.accelerator.engine.profiler


def test_simple_profiler_table_names_each_phase_and_adds_up(capsys, make_trainer):
    watch = Watch()
    trainer = make_trainer(max_epochs=2, profiler="simple", callbacks=[watch], num_sanity_val_steps=1,
                           enable_checkpointing=False)
    trainer.fit(BoringModel(), regression_loader(32, 8), regression_loader(16, 8))
    rows, total = _table(capsys.readouterr().out)
    assert rows["training_step"][0] == rows["backward"][0] == rows["optimizer_step"][0] == 8
    assert rows["zero_grad"][0] == 8 and rows["train_dataloader_next"][0] == 2 * 4 + 2  # 4 batches + the end, x2
    assert rows["validation"][0] == 3 and rows["sanity_check"][0] == 1  # 2 epochs + the sanity check
    assert rows["[Watch].on_train_batch_end"][0] == 8 and rows["setup"][0] == 1
    assert rows["fit (loop overhead)"][0] == 1
    # own times: no action counted twice, so the rows add up to the stage's wall time
    assert sum(spent for _, spent in rows.values()) == pytest.approx(total, abs=1e-5 * len(rows))
    # the strategy object is never touched: the step engine times its calls
    assert watch.hooks_type is not Hooks and watch.shadowed == [] and watch.engine_profiler is trainer.profiler
    assert trainer.accelerator.engine.profiler is None  # released with the stage
    assert isinstance(trainer.profiler, SimpleProfiler)


def test_without_a_profiler_nothing_is_wrapped(make_trainer):
    """The default costs nothing: plain hook dispatch, the strategy's own methods, no timers."""
    watch = Watch()
    trainer = make_trainer(max_epochs=1, callbacks=[watch], enable_checkpointing=False)
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert trainer.profiler is None and watch.hooks_type is Hooks and watch.shadowed == []
    assert watch.engine_profiler is None


def test_simple_profiler_writes_its_report_to_a_file(tmp_path, make_trainer):
    make_trainer(max_epochs=1, profiler=SimpleProfiler(dirpath=str(tmp_path), filename="perf"),
                 enable_checkpointing=False).fit(
        BoringModel(), regression_loader(16, 8))
    rows, total = _table((tmp_path / "fit-perf.txt").read_text())
    assert rows["training_step"][0] == 2 and total > 0


def test_pytorch_profiler_writes_a_trace_beside_the_logs(capsys, make_trainer):
    trainer = make_trainer(max_epochs=1, profiler="pytorch", logger=CSVLogger("logs"), enable_checkpointing=False)
    trainer.fit(BoringModel(), regression_loader(64, 8))
    traces = glob.glob(os.path.join(trainer.log_dir, "profiler", "*.pt.trace.json"))
    assert len(traces) == 1 and os.path.basename(traces[0]).startswith("fit-rank0")
    with open(traces[0]) as f:
        trace = json.load(f)  # the Chrome trace format TensorBoard's profiler plugin reads
    names = [e.get("name") for e in trace["traceEvents"]]
    for action in ("training_step", "backward", "optimizer_step", "train_dataloader_next"):
        assert action in names
    assert names.count("training_step") == 5  # the first num_steps=5 training batches
    assert "aten::addmm" in names  # torch's own operators inside the ranges
    assert "PyTorch profiler trace in" in capsys.readouterr().out


def test_bad_profiler_is_refused_before_training(make_trainer):
    with pytest.raises(ValueError, match=r"Trainer\(profiler='advanced'\): expected None, 'simple', 'pytorch', or a "
                                         r"Profiler object .* 'advanced' \(cProfile\) is not available"):
        make_trainer(profiler="advanced", max_epochs=2, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"PyTorchProfiler\(num_steps=0\): expected a positive int"):
        PyTorchProfiler(num_steps=0)
    with pytest.raises(ValueError, match=r"Trainer\(barebones=True, profiler='simple'\): barebones turns off"):
        make_trainer(barebones=True, profiler="simple", max_epochs=2, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"Trainer\(barebones=True, enable_model_summary=True\)"):
        make_trainer(barebones=True, enable_model_summary=True, max_epochs=2, enable_checkpointing=False)
