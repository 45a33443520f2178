"""Checkpoint save/load cost against bare torch.save / torch.load of the same content.

A ~100M-parameter model (24 Linear(2048, 2048) layers) trained one step with Adam, so the
checkpoint holds weights plus two moment buffers (~1.2 GB). Measured, interleaved, medians:

- save: ``trainer.save_checkpoint(path)`` (builds the checkpoint dict, writes a temp file with
  the disk's writeback started every 64 MB, fsyncs it, renames it, fsyncs the directory) vs
  ``torch.save(same_dict, path)`` (no fsync: the bare call returns while the data may still sit
  in the page cache), and vs ``torch.save`` + ``os.fsync`` (the same durability as ours).
- load: ``fit(ckpt_path=...)``'s reader (``torch.load(weights_only=True)`` with error
  reporting) vs bare ``torch.load``, reading the same file in alternating order.
- stall: how long one training step is held up by a save: a synchronous save, and a
  ``ModelCheckpoint(async_save=True)`` save (a copy of the state; the file is written behind).

    python benchmarks/checkpoint.py [--reps 5] [--layers 24] [--dir /tmp/ckpt-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainer.strategies.checkpoint_io import safe_load  # noqa: E402
from trainer import Trainer, TrainModule  # noqa: E402
from trainer.persistence.trainer_checkpoint import dump  # noqa: E402


class Big(TrainModule):
    def __init__(self, layers: int, width: int = 2048) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.body(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _bare_save_fsync(obj, path: str) -> None:
    torch.save(obj, path)  # to a path (torch's C++ writer: faster than through a Python file object)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _warm(path: str) -> None:
    """Read the file once so both loaders find it in the page cache (our writer drops the pages
    it has written from the cache, so the first read after a save comes from the disk)."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--dir", default="/tmp/ckpt-bench")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = Big(args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    loader = DataLoader(TensorDataset(torch.randn(4, 2048)), batch_size=4)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(model, loader)
    content = dump(trainer)
    trainer.save_checkpoint(str(out / "warm.ckpt"))
    size_gb = os.path.getsize(out / "warm.ckpt") / 1e9

    # what a ModelCheckpoint(save_top_k=1, save_last=True) save holds training up for: the checkpoint and
    # last.ckpt (a hard link to it where the filesystem allows; a second full write before)
    from trainer.callbacks import ModelCheckpoint

    periodic = ModelCheckpoint(dirpath=str(out / "periodic"), save_top_k=1, save_last=True, filename="{step}")
    periodic.dirpath = str(out / "periodic")

    def _periodic_save() -> None:
        trainer.state.global_step += 1  # a new file each time, as training would produce
        periodic._save(trainer)

    # the same with async_save=True: what holds training up is the snapshot of the state in memory
    # (the previous write is waited for, untimed, as training would have gone on meanwhile)
    background = ModelCheckpoint(dirpath=str(out / "background"), save_top_k=1, save_last=True, filename="{step}",
                                 async_save=True)
    background.dirpath = str(out / "background")

    def _background_save() -> None:
        trainer.state.global_step += 1
        background._save(trainer)

    times: dict[str, list[float]] = {k: [] for k in ("ours_save", "bare_save", "bare_save_fsync",
                                                     "ours_load", "bare_load", "periodic", "background")}
    for rep in range(args.reps):  # interleaved, so drift and noise hit every variant alike
        times["ours_save"].append(_timed(lambda: trainer.save_checkpoint(str(out / "ours.ckpt"))))
        times["bare_save"].append(_timed(lambda: torch.save(content, out / "bare.ckpt")))
        times["bare_save_fsync"].append(_timed(lambda: _bare_save_fsync(content, str(out / "bare_fsync.ckpt"))))
        times["periodic"].append(_timed(_periodic_save))
        trainer.background_writer.wait()
        times["background"].append(_timed(_background_save))
        trainer.background_writer.wait()
        # both readers read the same file, warm in the page cache, in alternating order
        _warm(str(out / "ours.ckpt"))
        loads = [("ours_load", lambda: safe_load(str(out / "ours.ckpt"))),
                 ("bare_load", lambda: torch.load(out / "ours.ckpt", map_location="cpu"))]
        for name, fn in loads if rep % 2 else loads[::-1]:
            times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {n_params / 1e6:.1f}M parameters; checkpoint {size_gb:.2f} GB (weights + Adam state); "
          f"{args.reps} interleaved repetitions, medians")
    print()
    print("| operation | this library | bare torch | ratio |")
    print("|---|---|---|---|")
    print(f"| save (vs torch.save) | {med['ours_save']:.2f} s | {med['bare_save']:.2f} s | "
          f"{med['ours_save'] / med['bare_save']:.2f}x |")
    print(f"| save (vs torch.save + fsync) | {med['ours_save']:.2f} s | {med['bare_save_fsync']:.2f} s | "
          f"{med['ours_save'] / med['bare_save_fsync']:.2f}x |")
    print(f"| load | {med['ours_load']:.2f} s | {med['bare_load']:.2f} s | "
          f"{med['ours_load'] / med['bare_load']:.2f}x |")
    print()
    print(f"Training stalls for the whole save: {med['ours_save']:.2f} s per checkpoint "
          f"({size_gb / med['ours_save']:.2f} GB/s); a ModelCheckpoint(save_top_k=1, save_last=True) save, "
          f"last.ckpt included: {med['periodic']:.2f} s; with async_save=True, {med['background']:.2f} s "
          "(the copy of the state; the file is written while training goes on).")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
