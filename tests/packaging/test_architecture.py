"""The shape of the house, read from the source: nothing outside trainer/trainer.py touches a private
of the Trainer (the loops get their collaborators handed over, callbacks use the public surface),
the Trainer has no mixins, and the fit loop's state is what a checkpoint's "loops" entry holds."""

from __future__ import annotations

import ast

import pytest

from tests import ROOT

LIBRARY = [ROOT / "trainer", ROOT / "callbacks", ROOT / "strategies", ROOT / "benchmarks", ROOT / "examples"]
TRAINER_FILE = ROOT / "trainer" / "trainer.py"
# names under which library code holds a Trainer
TRAINER_NAMES = {"trainer", "_trainer"}
SUBMODULES = {p.stem for p in (ROOT / "trainer").iterdir()} | {"callbacks", "strategies"}


def _names_a_trainer(node: ast.AST) -> bool:
    """``trainer``, ``self.trainer``, ``self._trainer``, ``module.trainer`` ..."""
    if isinstance(node, ast.Name):
        return node.id in TRAINER_NAMES
    return isinstance(node, ast.Attribute) and node.attr in TRAINER_NAMES


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, text) of every read or write of a Trainer's private attribute in ``source``:
    ``trainer._x``, ``self._trainer._x``, ``getattr(trainer, "_x")``, ``setattr(trainer, "_x", v)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and _names_a_trainer(node.value):
            if isinstance(node.value, ast.Name) and node.value.id == "trainer" and node.attr in SUBMODULES:
                continue  # the package's own module (trainer._logging), not an attribute of a Trainer
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2 \
                and _names_a_trainer(node.args[0]) and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _is_private(node.args[1].value):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_finds_each_kind_of_private_use():
    source = ("trainer._hooks('x')\nself._trainer._where()\nmodule.trainer._metrics = 1\n"
              "getattr(trainer, '_told', False)\nsetattr(trainer, '_flag', True)\n"
              "trainer.global_step\ntrainer.__class__\nfrom trainer._logging import log\nimport trainer._wrappers\n"
              "trainer.logs.console.log\nself._hooks\nloop._state\n")
    assert sorted(line for line, _ in private_uses(source)) == [1, 2, 3, 4, 5]


def test_no_module_outside_the_trainer_touches_a_trainer_private():
    offenders = []
    for folder in LIBRARY:
        for path in sorted(folder.rglob("*.py")):
            if path == TRAINER_FILE:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in private_uses(path.read_text())]
    assert not offenders, ("these read or write a private of the Trainer; make what they need a documented "
                           "public member, or hand it over explicitly:\n" + "\n".join(offenders))


def test_the_trainer_has_no_mixins():
    tree = ast.parse(TRAINER_FILE.read_text())
    trainer_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer_class.bases == [], [ast.unparse(b) for b in trainer_class.bases]


LOOPS_LAYOUT = {"global_step", "current_epoch", "batch_idx", "batches_seen", "samples_seen", "should_stop",
                "val_pending", "epoch_trained", "epoch_start_rng", "results", "callback_metrics",
                "train_batch_size", "data_seed", "train_shuffle"}  # (+ "epoch_order" inside a re-dealt epoch: reshard.py)


def test_the_fit_loop_state_is_the_checkpoints_loops_entry(make_trainer, tmp_path):
    from tests.helpers.models import BoringModel, regression_loader

    trainer = make_trainer(max_steps=3, default_root_dir=str(tmp_path), enable_checkpointing=False)
    trainer.fit(BoringModel(), regression_loader(32, 4))
    loops = trainer.dump_checkpoint()["loops"]
    assert set(loops) == LOOPS_LAYOUT  # the layout checkpoints were written in: they still resume
    assert loops == trainer.fit_loop.state_dict()
    assert (loops["global_step"], loops["batch_idx"]) == (3, 3)
    other = make_trainer(max_steps=3)
    other.fit_loop.load_state_dict(loops)
    assert other.global_step == 3 and other.state.batch_idx == 3 and other.fit_loop.epoch_start_rng is not None
    # no loaders counted yet, none asked for
    assert other.fit_loop.state_dict() == {**loops, "epoch_trained": False, "train_batch_size": None}


@pytest.mark.parametrize("name", ["is_accumulating", "refresh_callback_metrics", "background_writer",
                                  "checkpoint_dir", "fit_loop", "optimizer", "train_dataloader", "val_dataloaders",
                                  "is_last_batch", "num_training_batches", "estimated_stepping_batches"])
def test_what_callbacks_use_is_public_and_documented(name):
    from trainer import Trainer

    member = getattr(Trainer, name, None)
    if member is None:  # an instance attribute set in __init__
        assert f"self.{name} =" in TRAINER_FILE.read_text()
        return
    documented = member.__doc__ if not isinstance(member, property) or member.fget.__doc__ else None
    line = next((ln for ln in TRAINER_FILE.read_text().splitlines() if ln.strip().startswith(f"{name} = ")), "")
    assert documented or "#" in line, f"Trainer.{name}: say in a docstring or a comment what it is"
