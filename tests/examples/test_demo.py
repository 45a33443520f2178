"""The embedded demo (examples/char_transformer.py, run by `make demo`), at a tiny size."""

import importlib.util
import math
import pytest
import torch

from tests import ROOT

DEMO_PATH = ROOT / "examples" / "char_transformer.py"


def _load_demo():
    spec = importlib.util.spec_from_file_location("char_transformer_demo", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--max-steps", "60", "--val-every", "30", "--val-batches", "4", "--batch-size", "16",
        "--block-size", "32", "--n-layer", "1", "--n-head", "2", "--d-model", "32",
        "--limit-chars", "60000", "--sample-chars", "120"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model is too small to gain from a second thread, and under `pytest -n 2` two
    workers' thread pools would fight over two cores and run several times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_demo_trains_validates_and_samples(tmp_path, capsys):
    demo = _load_demo()
    result = demo.main([*TINY, "--default-root-dir", str(tmp_path / "runs")])
    trainer, model = result.trainer, result.model

    assert trainer.global_step == 60
    assert trainer.current_epoch == 2  # an "epoch" is --val-every steps
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["val/loss"])
    # The first loss sits near ln(vocab) (a uniform guess); 60 steps take it well below.
    assert model.initial_loss is not None and math.isfinite(model.initial_loss)
    assert metrics["train/loss"] < model.initial_loss - 0.5
    assert metrics["val/loss"] < model.initial_loss

    assert len(result.sample) == 120
    out = capsys.readouterr().out
    assert "Fit finished: 60 optimizer steps" in out  # the Trainer's end-of-fit summary
    assert "characters sampled after 'def '" in out
    # a tiny run's sample is noise: the demo says what the user is looking at before showing it
    assert out.index("What to expect: after 60 steps on a CPU") < out.index("characters sampled after")
    assert "--max-time guard" not in out  # it ended as planned
    assert "def " + result.sample in out
    assert (tmp_path / "runs").is_dir()  # the metrics went under --default-root-dir, not the cwd


def test_demo_sampling_is_seeded(tmp_path):
    demo = _load_demo()
    text = demo.load_stdlib_text(20_000)
    assert len(text) == 20_000 and text == demo.load_stdlib_text(20_000)  # sorted files: same text every run
    model = demo.CharTransformer(vocab_size=50, block_size=8, n_layer=1, n_head=2, d_model=16)
    first = model.generate([1, 2, 3], num_chars=20, seed=7)
    assert len(first) == 20 and all(0 <= i < 50 for i in first)
    assert model.generate([1, 2, 3], num_chars=20, seed=7) == first  # longer than block_size: the window slides


def test_demo_says_when_its_time_guard_cut_training_short(tmp_path, capsys):
    demo = _load_demo()
    result = demo.main([*TINY, "--max-time", "0.001", "--default-root-dir", str(tmp_path / "runs")])
    assert result.trainer.global_step < 60
    out = capsys.readouterr().out
    assert f"The --max-time guard (0.001 s) ended training at step {result.trainer.global_step} of 60" in out
    assert "stopped: max_time=0.001 s reached" in out


def test_demo_rejects_steps_that_end_between_validations():
    demo = _load_demo()
    with pytest.raises(SystemExit):
        demo.parse_args(["--max-steps", "70", "--val-every", "30"])
