"""The seed's hand-written loop with DeepSpeed ZeRO-2, bf16, accumulation and W&B, on this library.

Only the two import lines differ from the Accelerate version of this script. Run it with

    trainer launch --num-processes 2 --cpu examples/seed_pattern.py --output-dir runs/seed

(W&B runs offline when no API key is configured; `wandb sync` uploads the run later.)
The data is synthetic regression data made here, so nothing is downloaded.
"""

import argparse
import os

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Accelerator, DeepSpeedPlugin
from trainer.utils import set_seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", default="runs/seed_pattern")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--log-with", default="wandb")
    args = parser.parse_args()

    set_seed(0)
    deepspeed_plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4)
    accelerator = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=4,
                              deepspeed_plugin=deepspeed_plugin, log_with=args.log_with, project_dir=args.output_dir)
    accelerator.init_trackers("seed_pattern", config={"lr": 1e-2, "epochs": args.epochs})

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = x @ torch.randn(16, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
    train_dataloader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.9)

    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler)

    step = 0
    for epoch in range(args.epochs):
        model.train()
        total, batches = torch.zeros(()), 0
        for batch in train_dataloader:
            inputs, targets = batch
            with accelerator.accumulate(model):
                outputs = model(inputs)
                loss = torch.nn.functional.mse_loss(outputs.float(), targets)
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            total, batches = total + loss.detach().float().cpu(), batches + 1
            if accelerator.sync_gradients:
                step += 1
                accelerator.log({"train_loss": loss.item()}, step=step)
        accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{epoch}"))
        mean = accelerator.reduce(total / batches, "mean")
        accelerator.print(f"epoch {epoch}: mean loss {mean.item():.4f}")

    accelerator.load_state(os.path.join(args.output_dir, f"checkpoint-{args.epochs - 1}"))
    accelerator.wait_for_everyone()
    accelerator.save_model(accelerator.unwrap_model(model), os.path.join(args.output_dir, "final_model"))
    accelerator.end_training()
    accelerator.print(f"done: {step} optimizer steps")


if __name__ == "__main__":
    main()
