"""Accelerate's documented training-script pattern (accelerate_docs_script.py, only its imports changed)
on 1 and on 2 real gloo processes, pinned by equivalences:

- stopped right after a ``save_state`` inside an epoch and resumed the documented way (``load_state``,
  the step parsed from the directory name, ``skip_first_batches``; neither ``set_epoch`` nor a seedable
  sampler), it ends on the same weights, bit for bit, as the uninterrupted run -- also when the resumed
  run is stopped and resumed again inside the same epoch;
- the accuracy from ``gather_for_metrics`` over 37 evaluation samples (an uneven last batch on 2
  processes) counts each sample once and equals the accuracy computed on one process over the whole
  set with the weights ``save_model`` wrote;
- ``split_between_processes`` + ``gather`` answers as one process does; the CSV tracker holds what
  ``log`` was given.

Before the fix (save_state did not record the prepared loaders' epoch and their shuffle's start
states) the resumed run drew another order for the rest of the interrupted epoch and the epochs after.
"""

from __future__ import annotations

import csv
import os

import pytest
import torch

from tests.examples.accelerate_docs_script import build_model, datasets, training_function
from tests.helpers.distributed import run_distributed


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.tensor(a[k]), torch.tensor(b[k])) for k in a)


def _final_model(root: str) -> torch.nn.Module:
    from trainer.utils import load_checkpoint_in_model  # accelerate's name, as its docs load save_model's output

    model = build_model()
    load_checkpoint_in_model(model, os.path.join(root, "final_model"))
    return model.eval()


def _check_outputs(root: str, result: dict) -> None:
    """What one process computes with the saved weights: the accuracy over the whole evaluation set,
    the answers to the prompts; and the tracker's file."""
    model = _final_model(root)
    assert _equal({k: v.tolist() for k, v in model.state_dict().items()}, result["weights"])
    _, eval_set = datasets()
    x, y = eval_set.tensors
    with torch.no_grad():
        predictions = model(x).argmax(-1)
    accuracy, seen = result["accuracies"][-1]
    assert seen == len(eval_set) == 37
    assert accuracy == int((predictions == y).sum()) / len(eval_set)
    assert result["answers"] == predictions[:7].tolist()
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "docs_example")) for f in fs
               if f == "metrics.csv"]
    with open(path) as f:
        logged = [float(row["accuracy"]) for row in csv.DictReader(f) if row.get("accuracy")]
    assert logged == pytest.approx([a for a, _ in result["accuracies"]])


@pytest.mark.timeout(120)
def test_docs_script_resumed_twice_inside_an_epoch_equals_no_interruption_on_one_process(tmp_path):
    root = str(tmp_path)
    reference = training_function(os.path.join(root, "reference"))
    run = os.path.join(root, "run")
    # 16 batches an epoch: steps 20 and 28 are inside epoch 1; the second resume starts from a skipped pass
    assert training_function(run, stop_at_step=20) is None
    assert training_function(run, resume_from_checkpoint=os.path.join(run, "step_20"), stop_at_step=28) is None
    resumed = training_function(run, resume_from_checkpoint=os.path.join(run, "step_28"))
    assert _equal(resumed["weights"], reference["weights"])
    assert resumed["accuracies"] == reference["accuracies"][1:] and resumed["lr"] == reference["lr"]
    _check_outputs(os.path.join(root, "reference"), reference)


def _two_processes(root: str) -> list:
    reference = training_function(os.path.join(root, "reference"))
    run = os.path.join(root, "run")
    assert training_function(run, stop_at_step=12) is None  # 8 batches an epoch per process: inside epoch 1
    resumed = training_function(run, resume_from_checkpoint=os.path.join(run, "step_12"))
    return [reference, resumed]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_docs_script_on_two_processes_resumes_exactly_and_its_gathered_metric_equals_one_process(tmp_path):
    root = str(tmp_path)
    (reference, resumed), (reference1, resumed1) = run_distributed(_two_processes, world_size=2, timeout=240,
                                                                   root=root)
    assert _equal(resumed["weights"], reference["weights"]) and _equal(resumed1["weights"], reference["weights"])
    assert _equal(reference1["weights"], reference["weights"])  # DDP kept the ranks equal
    assert resumed["accuracies"] == reference["accuracies"][1:]
    assert reference1["accuracies"] == reference["accuracies"] and reference1["answers"] == reference["answers"]
    _check_outputs(os.path.join(root, "reference"), reference)
