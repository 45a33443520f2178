"""The end-to-end check behind ``trainer test``, run on every process by torchrun (``-m trainer.cli.selftest``).

Each check runs on every rank; the results are gathered and rank zero prints one line per check
and a verdict. The process exits with status 1 when any check failed on any rank, so the launcher
(and ``trainer test``) fail too. The checks use the same engine as user code, built from the launch
settings (strategy, precision, accumulation), so they test the configuration, not a special path.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import torch

from trainer.engine.script_launch import launch_settings
from trainer.strategies.precision import PRECISION_TABLE, precision_name

# precision -> the dtype its matmuls run in, where that is not float32
_LOW_PRECISION = {name: autocast or params for name, (_, autocast, params) in PRECISION_TABLE.items()
                  if autocast or params}


class CheckFailed(Exception):
    """A check found a wrong result (raised by ``_require``; plain ``assert`` would vanish under ``python -O``)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _model() -> torch.nn.Module:
    torch.manual_seed(1234)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return torch.randn(n, 6, generator=g), torch.randn(n, 1, generator=g)


def _weights(accelerator: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in accelerator.get_state_dict(model).items()}


class SelfTest:
    """The checks, in order. Each returns a short detail string or raises."""

    def __init__(self, accelerator: Any) -> None:
        self.acc = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.precision = accelerator.precision
        self.tolerance = 5e-3 if self.precision in _LOW_PRECISION else 1e-5

    def _autocast_reference(self) -> Any:
        dtype = _LOW_PRECISION.get(self.precision)
        device = self.acc.device.type
        return torch.autocast(device, dtype=dtype) if dtype is not None and self.precision != "bf16-true" \
            else torch.autocast(device, enabled=False)

    # -- the checks ---------------------------------------------------------------------------------
    def process_group(self) -> str:
        expected = int(os.environ.get("WORLD_SIZE", "1"))
        _require(self.world == expected, f"the engine sees {self.world} processes, WORLD_SIZE says {expected}")
        ranks = self.acc.strategy.all_gather_object(self.rank)
        _require(ranks == list(range(self.world)), f"ranks {ranks}, expected 0..{self.world - 1} once each")
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none (one process)"
        return f"{self.world} process(es), backend {backend}, {type(self.acc.strategy).__name__}"

    def all_reduce(self) -> str:
        got = self.acc.reduce(torch.tensor([float(self.rank + 1)], device=self.acc.device), "sum").item()
        want = self.world * (self.world + 1) / 2
        _require(got == want, f"sum of rank+1 over ranks: got {got}, expected {want}")
        return f"sum over ranks = {got:g}"

    def all_gather(self) -> str:
        got = self.acc.gather(torch.tensor([self.rank, 10 * self.rank], device=self.acc.device)).tolist()
        want = [v for r in range(self.world) for v in (r, 10 * r)]
        _require(got == want, f"gathered {got}, expected {want}")
        return f"{len(got)} values in rank order"

    def broadcast(self) -> str:
        got = self.acc.strategy.broadcast({"from": self.rank, "token": 1234 + self.rank}, src=0)
        _require(got == {"from": 0, "token": 1234}, f"received {got}, expected rank 0's object")
        return "rank 0's object reached every rank"

    def _one_update(self, accelerator: Any, micro: int, per_rank: int) -> tuple[dict, dict]:
        """``micro`` micro-batches of ``per_rank`` samples on each rank and one optimizer step, against one
        process taking the same step on the whole global batch.

        Under 16-mixed the loss scaler may skip a step (its first scale overflows fp16 gradients, as
        designed) and lower its scale; such a skipped step is taken again, a few times at most.
        """
        for _ in range(30 if self.precision == "16-mixed" else 1):
            got, want, initial = self._try_update(accelerator, micro, per_rank)
            if any(not torch.equal(got[k], initial[k]) for k in got):
                break
        return got, want

    def _try_update(self, accelerator: Any, micro: int, per_rank: int) -> tuple[dict, dict, dict]:
        total = micro * per_rank * self.world
        x, y = _data(total)
        model = _model()
        initial = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = accelerator.prepare(model, optimizer)
        for m in range(micro):
            # micro-batch m of every rank together is a contiguous slice of the global batch
            start = (m * self.world + self.rank) * per_rank
            # as a prepared dataloader would hand it over (on the device, in the strategy's input dtype)
            xb, yb = accelerator.batch_to_device((x[start:start + per_rank], y[start:start + per_rank]))
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = torch.nn.functional.mse_loss(model(xb).float(), yb.float())
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        got = _weights(accelerator, model)
        reference = _model()
        with self._autocast_reference():
            loss = torch.nn.functional.mse_loss(reference(x).float(), y)
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                assert p.grad is not None  # every weight takes part in the loss
                p.sub_(0.1 * p.grad)
        return got, {k: v.detach().float() for k, v in reference.state_dict().items()}, initial

    def _compare(self, got: dict, want: dict) -> float:
        if not got and self.rank != 0:
            return 0.0  # a sharded strategy gathers the full weights on rank zero only; it compares them
        _require(set(got) == set(want), f"the engine's weights have keys {sorted(got)}, expected {sorted(want)}")
        worst = max((got[k] - want[k]).abs().max().item() for k in want)
        _require(worst <= self.tolerance, f"weights differ from the single-process reference by {worst:.3g} "
                                          f"(tolerance {self.tolerance:g} for {self.precision})")
        return worst

    def gradient_averaging(self) -> str:
        got, want = self._one_update(self.acc_for(1), micro=1, per_rank=4)
        worst = self._compare(got, want)
        return f"one step on {self.world}x4 samples equals one process on {4 * self.world} (max diff {worst:.1e})"

    def precision_check(self) -> str:
        expected = _expected_precision()
        _require(expected is None or self.precision == expected,
                 f"the engine uses {self.precision}, the config asks for {expected}")
        # through the strategy's own wrapping (autocast, or FSDP's mixed precision policy)
        accelerator = self.acc_for(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        model, _ = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        seen: list[torch.dtype] = []
        accelerator.unwrap_model(model)[0].register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
        with accelerator.autocast():
            model(accelerator.batch_to_device(torch.randn(2, 4)))
        out = torch.empty(0, dtype=seen[0])
        want = _LOW_PRECISION.get(self.precision, torch.float32) if self.precision != "bf16-true" else torch.bfloat16
        _require(out.dtype == want, f"a Linear inside the prepared model computes in {out.dtype}, expected {want}")
        return f"{self.precision}: matmuls in {str(out.dtype).replace('torch.', '')}"

    def accumulation(self) -> str:
        steps = self.acc.gradient_accumulation_steps
        k = steps if steps > 1 else 2
        got, want = self._one_update(self.acc_for(k), micro=k, per_rank=2)
        worst = self._compare(got, want)
        note = "" if steps > 1 else " (the config accumulates 1; checked with 2)"
        return f"{k} micro-batches equal one big batch (max diff {worst:.1e}){note}"

    def checkpoint(self) -> str:
        accelerator = self.acc_for(1)
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model, optimizer = accelerator.prepare(model, optimizer)
        x, y = _data(4)

        def step() -> None:
            with accelerator.autocast():
                xb, yb = accelerator.batch_to_device((x, y))
                loss = torch.nn.functional.mse_loss(model(xb).float(), yb.float())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

        step()
        directory = self.acc.strategy.broadcast(tempfile.mkdtemp(prefix="trainer-test-") if self.rank == 0 else None)
        try:
            accelerator.save_state(os.path.join(directory, "state"))
            saved = _weights(accelerator, model)
            step()
            moved = _weights(accelerator, model)
            _require(any(not torch.equal(saved[k], moved[k]) for k in saved) or not saved,
                     "a training step did not change the weights")
            accelerator.load_state(os.path.join(directory, "state"))
            restored = _weights(accelerator, model)
            bad = [k for k in saved if not torch.equal(saved[k], restored[k])]
            _require(not bad, f"after load_state these weights differ from what was saved: {bad}")
        finally:
            accelerator.wait_for_everyone()
            if self.rank == 0:
                shutil.rmtree(directory, ignore_errors=True)
        return "save_state / load_state restores the weights exactly"

    def acc_for(self, accumulation: int) -> Any:
        """An engine on the same strategy with this accumulation (no second process group)."""
        from trainer import Accelerator

        return Accelerator(strategy=self.acc.strategy, gradient_accumulation_steps=accumulation)

    CHECKS = (("process group", "process_group"), ("all_reduce", "all_reduce"), ("all_gather", "all_gather"),
              ("broadcast", "broadcast"), ("gradient averaging", "gradient_averaging"),
              ("precision", "precision_check"), ("accumulation", "accumulation"), ("checkpoint", "checkpoint"))


def _expected_precision() -> str | None:
    value = launch_settings().get("mixed_precision")
    return None if value is None else precision_name(value)


def _run(name: str, fn: Callable[[], str]) -> tuple[bool, str]:
    start = time.perf_counter()
    try:
        detail = fn()
    except Exception as err:  # a failed check is reported, not raised: the others still run
        last = traceback.extract_tb(err.__traceback__)[-1]
        return False, f"{type(err).__name__}: {err} ({os.path.basename(last.filename)}:{last.lineno})"
    return True, f"{detail} [{time.perf_counter() - start:.2f}s]"


def main() -> int:
    from trainer import Accelerator

    rank = int(os.environ.get("RANK", "0"))
    try:
        accelerator = Accelerator()
    except Exception as err:
        print(f"rank {rank}: FAIL  process group: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        print(f"rank {rank}: trainer test: FAILED before any check could run", file=sys.stderr, flush=True)
        return 1
    test = SelfTest(accelerator)
    failures = 0
    for label, method in SelfTest.CHECKS:
        ok, detail = _run(label, getattr(test, method))
        results = accelerator.strategy.all_gather_object((ok, detail))
        if all(r[0] for r in results):
            accelerator.print(f"  PASS  {label:<19} {results[0][1]}", flush=True)
            continue
        failures += 1
        for r, (rank_ok, rank_detail) in enumerate(results):
            if not rank_ok:
                accelerator.print(f"  FAIL  {label:<19} rank {r}: {rank_detail}", flush=True)
    total = len(SelfTest.CHECKS)
    setup = f"{test.world} process(es), {accelerator.device.type}, {test.precision}, {type(accelerator.strategy).__name__}"
    if failures:
        accelerator.print(f"trainer test: FAILED ({failures} of {total} checks failed; {setup})", flush=True)
        return 1
    accelerator.print(f"trainer test: PASSED (all {total} checks; {setup})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
