"""Train a small character-level transformer on Python's own standard library, on CPU.

Run it with ``make demo`` (``--help`` lists the knobs). One file shows the public surface:
a ``TrainModule`` that logs its losses, AdamW with a per-step warmup+cosine schedule, the
``Trainer``'s progress bar, periodic validation, the end-of-fit summary, then sampled text.
The data is the standard library's own ``.py`` files, read in sorted order up to a budget:
no download, and the same text on every machine with the same Python.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

# OpenMP's default is to busy-wait between parallel regions. On a small machine shared with
# anything else, torch's threads then spin against the other process and a step can take 10x
# longer; waiting passively costs ~3% when the machine is idle. It must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from trainer import Trainer, TrainModule, seed_everything  # noqa: E402


def load_stdlib_text(limit_chars: int) -> str:
    """The top-level ``.py`` files of the standard library, sorted by name, cut at ``limit_chars``."""
    root = Path(os.path.dirname(os.__file__))
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):  # sorted: the same text on every run
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(parts[-1])
        if total >= limit_chars:
            break
    return "".join(parts)[:limit_chars]


class CharWindows(Dataset):
    """Windows of ``block_size + 1`` characters: the input is the first ``block_size``, the
    target the same window shifted by one, so every position predicts its next character."""

    def __init__(self, data: torch.Tensor, block_size: int, stride: int = 1) -> None:
        self.data, self.block_size, self.stride = data, block_size, stride

    def __len__(self) -> int:
        return (len(self.data) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i * self.stride: i * self.stride + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP, each on a residual path."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)  # one matmul for queries, keys and values
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        # (b, t, c) -> (b, heads, t, c / heads): each head attends on its own slice of channels.
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        # softmax(q k^T / sqrt(d)) v with a causal mask, so position i sees only positions <= i.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharTransformer(TrainModule):
    """A GPT-style language model over characters: token + position embeddings, blocks, a head."""

    def __init__(self, vocab_size: int, block_size: int = 128, n_layer: int = 4, n_head: int = 4,
                 d_model: int = 128, lr: float = 3e-3, weight_decay: float = 0.1, warmup_steps: int = 50,
                 max_steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters()  # logged with the run (hparams.yaml)
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_head) for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.apply(self._init_weights)
        self.initial_loss: float | None = None

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Small weights make the first predictions near uniform, so training starts at a loss
        # of about ln(vocab_size) instead of a confident, wrong guess.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, time, vocab) for a (batch, time) tensor of character ids."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        return self.head(self.ln_f(self.blocks(x)))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        if self.initial_loss is None:
            self.initial_loss = loss.item()  # one host read, so the demo can report how far the loss fell
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # Decay the weight matrices only: pulling biases and LayerNorm gains toward zero does not
        # regularise, it only fights what they are for.
        groups = [{"params": [p for p in self.parameters() if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
                  {"params": [p for p in self.parameters() if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(0.9, 0.99))
        warmup, total = hp["warmup_steps"], hp["max_steps"]

        def lr_factor(step: int) -> float:
            # Linear warmup keeps Adam's first, badly estimated steps small; the cosine then
            # anneals to 10% of the peak, where the last steps polish rather than jump.
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def generate(self, prompt: Sequence[int], num_chars: int, temperature: float = 0.8,
                 seed: int = 0) -> list[int]:
        """Sample ``num_chars`` character ids after ``prompt``, one at a time."""
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)  # same text on every run
        idx = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
        for _ in range(num_chars):
            logits = self(idx[:, -self.block_size:])[:, -1, :]  # the model only knows block_size positions
            probs = F.softmax(logits / temperature, dim=-1)  # < 1 sharpens: fewer unlikely characters
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        self.train(was_training)
        return idx[0, len(prompt):].tolist()


class DemoResult(NamedTuple):
    trainer: Trainer
    model: CharTransformer
    sample: str  # the generated text, without the prompt


# val/loss (nats per character) above which the demo says, before the sample, that it is still rough
# (a rule of thumb: the default run ends near 2.2, where words are not yet formed)
ROUGH_BELOW = 1.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Sized to finish well inside --max-time on a busy 2-core machine: 300 steps of a 0.43M-parameter
    # model took 40 CPU-s (114 s of wall time at load 15 on 2 cores); the old 600 steps of 0.83M needed
    # ~12 minutes there and were cut by the guard.
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--val-every", type=int, default=50, help="validate (and end an 'epoch') every N steps")
    p.add_argument("--val-batches", type=int, default=16, help="validation batches per validation")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=64, help="context length in characters")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    p.add_argument("--limit-chars", type=int, default=1_500_000, help="characters of stdlib source to read")
    # bf16-mixed measured ~15x slower here: a CPU without native bf16 (AVX2 only) emulates it.
    p.add_argument("--precision", default="32-true", help="'32-true' or 'bf16-mixed'")
    p.add_argument("--max-time", type=float, default=150.0,
                   help="stop training after this many seconds even if max-steps is not reached")
    p.add_argument("--sample-chars", type=int, default=400, help="characters to generate at the end")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--default-root-dir", default="runs", help="where the metrics CSV goes")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    if args.max_steps % args.val_every:
        p.error(f"--max-steps {args.max_steps} must be a multiple of --val-every {args.val_every}, "
                "so that training ends with a validation")
    return args


def main(argv: Sequence[str] | None = None) -> DemoResult:
    """Train, validate, sample; returns the trainer, the trained model and the sampled text."""
    args = parse_args(argv)
    seed_everything(args.seed)

    text = load_stdlib_text(args.limit_chars)
    vocab = sorted(set(text) | set(args.prompt))
    to_id = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([to_id[ch] for ch in text], dtype=torch.long)
    # The last 10% is held out. The files are in name order, so validation is on modules
    # the model never trained on: it measures Python in general, not memorised files.
    n_val = max(len(data) // 10, args.block_size + 1)
    train_data, val_data = data[:-n_val], data[-n_val:]

    # Training draws random windows, with replacement. An "epoch" is only val_every batches
    # of them: the Trainer validates and reports at every epoch end, which paces the demo.
    train_set = CharWindows(train_data, args.block_size)
    sampler = RandomSampler(train_set, replacement=True, num_samples=args.val_every * args.batch_size)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    # Validation takes the same non-overlapping windows every time, so its losses compare.
    val_set = CharWindows(val_data, args.block_size, stride=args.block_size)
    val_loader = DataLoader(val_set, batch_size=args.batch_size)

    model = CharTransformer(len(vocab), block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                            d_model=args.d_model, lr=args.lr, warmup_steps=max(1, args.max_steps // 10),
                            max_steps=args.max_steps)
    trainer = Trainer(
        max_steps=args.max_steps,
        max_epochs=args.max_steps // args.val_every,
        max_time=args.max_time,  # a guard for a busy machine: the demo promises to finish in minutes
        precision=args.precision,
        gradient_clip_val=1.0,  # the warmup's large steps can spike the loss; clipping keeps them bounded
        limit_val_batches=args.val_batches,
        log_every_n_steps=min(10, args.val_every),  # how often the bar's train/loss refreshes
        default_root_dir=args.default_root_dir,
        enable_progress_bar=not args.no_progress,
        enable_checkpointing=False,  # nothing to resume in a demo
    )
    num_params = sum(p.numel() for p in model.parameters())
    print(f"Training a {num_params / 1e6:.2f}M-parameter character transformer on {len(text):,} characters "
          f"of the standard library's source ({len(vocab)} distinct characters), precision {args.precision}.")
    trainer.fit(model, train_loader, val_loader)

    metrics = trainer.callback_metrics
    # either may be missing when the --max-time guard stopped training before its first step or validation
    train_loss, val_loss = metrics.get("train/loss"), metrics.get("val/loss")
    print((f"train/loss {model.initial_loss:.3f} at the first step -> {train_loss:.3f}; " if train_loss is not None
           else "no training step ran; ")
          + (f"val/loss {val_loss:.3f}" if val_loss is not None else "no validation ran")
          + f" (a uniform guess scores ln({len(vocab)}) = {math.log(len(vocab)):.3f})")
    if trainer.global_step < args.max_steps:  # the --max-time guard cut training short
        print(f"The --max-time guard ({args.max_time:g} s) ended training at step {trainer.global_step} of "
              f"{args.max_steps}: the machine is busy. The sample below is from that point.")
    latest = val_loss if val_loss is not None else train_loss
    if trainer.global_step and (latest is None or latest > ROUGH_BELOW):
        print(f"What to expect: after {trainer.global_step} steps on a CPU the model has learnt which characters "
              "are common and the shape of Python source (indentation, spaces around operators, 'def', 'self', "
              "brackets and quotes), not yet whole words, so the sample looks like code from a distance. "
              "Train longer for readable names, e.g. --max-steps 3000 --max-time 1800 (about 10x the time).")
    ids = model.generate([to_id[ch] for ch in args.prompt], args.sample_chars, temperature=0.8, seed=args.seed)
    sample = "".join(vocab[i] for i in ids)
    print(f"\n--- {args.sample_chars} characters sampled after {args.prompt!r} (temperature 0.8, seed {args.seed}) ---")
    print(args.prompt + sample)
    print("--- end of sample ---")
    return DemoResult(trainer, model, sample)


if __name__ == "__main__":
    main()
