"""A training script written as Accelerate's documentation and by-feature examples teach it, with only
the import lines changed (used by test_accelerate_docs_script.py, on 1 and on 2 processes):

- ``prepare`` of a model, an optimizer, a scheduler and two shuffled/unshuffled loaders;
- gradient accumulation with ``accelerator.accumulate(model)``;
- an evaluation metric from ``gather_for_metrics`` (the evaluation set does not divide evenly);
- ``save_state`` every few optimizer steps into ``step_<n>`` directories and, to resume, ``load_state``
  with the step parsed from the directory name and ``skip_first_batches`` past the trained batches of
  that epoch -- the by-feature checkpointing example's pattern, with neither ``set_epoch`` nor a
  seedable sampler;
- ``print``, ``wait_for_everyone``, ``unwrap_model``, ``save_model``, ``split_between_processes``,
  ``init_trackers`` / ``log`` / ``end_training``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainer import Accelerator
from trainer.utils import set_seed

FEATURES, CLASSES, EPOCHS, ACCUMULATION, SAVE_EVERY = 6, 3, 3, 2, 2


def datasets():
    g = torch.Generator().manual_seed(0)
    centers = 2 * torch.randn(CLASSES, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (101,), generator=g)
    x = centers[y] + torch.randn(101, FEATURES, generator=g)
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])  # 64 train, 37 eval samples


def build_model():
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(16, CLASSES))


def training_function(root: str, resume_from_checkpoint: str | None = None, stop_at_step: int | None = None):
    accelerator = Accelerator(gradient_accumulation_steps=ACCUMULATION, cpu=True, log_with="csv", project_dir=root)
    set_seed(42)
    train_set, eval_set = datasets()
    train_dataloader = DataLoader(train_set, batch_size=4, shuffle=True)
    eval_dataloader = DataLoader(eval_set, batch_size=5)
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + 0.1 * step))
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler)
    accelerator.init_trackers("docs_example", config={"lr": 0.01, "epochs": EPOCHS})

    overall_step, starting_epoch, resume_step = 0, 0, None
    if resume_from_checkpoint:
        accelerator.print(f"Resumed from checkpoint: {resume_from_checkpoint}")
        accelerator.load_state(resume_from_checkpoint)
        # the directory name holds the number of batches trained (step_<n>)
        resume_step = int(os.path.basename(resume_from_checkpoint).replace("step_", ""))
        starting_epoch = resume_step // len(train_dataloader)
        resume_step -= starting_epoch * len(train_dataloader)

    accuracies = []
    for epoch in range(starting_epoch, EPOCHS):
        model.train()
        if resume_from_checkpoint and epoch == starting_epoch and resume_step is not None:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
            overall_step = epoch * len(train_dataloader) + resume_step
        else:
            active_dataloader = train_dataloader
        for batch in active_dataloader:
            inputs, targets = batch
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(inputs), targets)
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            overall_step += 1
            if overall_step % (SAVE_EVERY * ACCUMULATION) == 0:  # between accumulation windows
                accelerator.save_state(os.path.join(root, f"step_{overall_step}"))
                if overall_step == stop_at_step:
                    return None  # "killed" right after this save
        model.eval()
        correct = seen = 0
        for inputs, targets in eval_dataloader:
            with torch.no_grad():
                predictions = model(inputs).argmax(dim=-1)
            predictions, references = accelerator.gather_for_metrics((predictions, targets))
            correct += int((predictions == references).sum())
            seen += len(references)
        accuracies.append((correct / seen, seen))
        accelerator.print(f"epoch {epoch}: accuracy {correct / seen:.3f} over {seen} samples")
        accelerator.log({"accuracy": correct / seen, "train_loss": loss.item()}, step=epoch)

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    accelerator.save_model(unwrapped, os.path.join(root, "final_model"))
    weights = {k: v.detach().clone().tolist() for k, v in unwrapped.state_dict().items()}

    # batch inference on a list of prompts, each process its share, gathered back in order
    prompts = [eval_set.tensors[0][i] for i in range(7)]
    with accelerator.split_between_processes(prompts, apply_padding=True) as share:
        with torch.no_grad():
            outputs = unwrapped(torch.stack(share)).argmax(-1)
    answers = accelerator.gather(outputs)[:len(prompts)].tolist()
    accelerator.end_training()
    return {"weights": weights, "accuracies": accuracies, "answers": answers,
            "lr": optimizer.param_groups[0]["lr"], "rank": accelerator.process_index}
