"""``TrainerView`` (callbacks/view.py) is what a callback may use of its ``trainer``: the ``Callback``
hooks are annotated with it, the Trainer has every member of it, and the library's own callbacks use
nothing else -- read from their source (the ``trainer`` argument, ``self.trainer``/``self._trainer``,
local aliases of them, and ``getattr(trainer, "name")``)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tests import ROOT
from trainer import Trainer
from trainer.callbacks import Callback
from trainer.callbacks.view import TrainerView

CALLBACKS = ROOT / "callbacks"


def view_members() -> set[str]:
    return {name for name, value in vars(TrainerView).items()
            if not name.startswith("_") and (isinstance(value, property) or inspect.isfunction(value))}


def _is_trainer(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in aliases
    return (isinstance(node, ast.Attribute) and node.attr in ("trainer", "_trainer")
            and isinstance(node.value, ast.Name) and node.value.id == "self")


def trainer_uses(source: str) -> list[tuple[int, str]]:
    """(line, name) of every member a callback module reads or writes on a trainer."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        aliases = {"trainer"} & params
        for node in ast.walk(fn):  # `t = trainer` / `t = self.trainer`: t is the trainer too
            if isinstance(node, ast.Assign) and _is_trainer(node.value, aliases | {"trainer"} & params):
                aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and _is_trainer(node.value, aliases):
                found.append((node.lineno, node.attr))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                  and _is_trainer(node.args[0], aliases) and isinstance(node.args[1], ast.Constant)):
                found.append((node.lineno, str(node.args[1].value)))
    return found


def _library_callbacks() -> list[Path]:
    return sorted(p for p in CALLBACKS.glob("*.py") if p.name not in ("view.py", "__init__.py"))


@pytest.mark.parametrize("path", _library_callbacks(), ids=lambda p: p.name)
def test_library_callbacks_use_only_the_view(path):
    members = view_members()
    outside = sorted({f"line {line}: trainer.{name}" for line, name in trainer_uses(path.read_text())
                      if name not in members})
    assert not outside, (f"{path.name} uses members of the trainer outside TrainerView (callbacks/view.py); add "
                         "the member to the view if users need it too, or change the callback:\n" + "\n".join(outside))


def test_the_checker_sees_aliases_getattr_and_a_stored_trainer():
    source = '''
class C:
    def setup(self, trainer, module, stage):
        self._trainer = trainer
        t = trainer
        t.hidden_a
        getattr(trainer, "hidden_b", None)
        self.trainer.hidden_c
        trainer.global_step
'''
    names = {name for _, name in trainer_uses(source)} - view_members()
    assert names == {"hidden_a", "hidden_b", "hidden_c"}


def test_every_hook_takes_a_trainer_view():
    hooks = [(name, fn) for name, fn in vars(Callback).items() if inspect.isfunction(fn)
             and "trainer" in inspect.signature(fn).parameters]
    assert len(hooks) > 30
    wrong = [name for name, fn in hooks if inspect.signature(fn).parameters["trainer"].annotation != "TrainerView"]
    assert not wrong, f"Callback hooks whose trainer is not annotated TrainerView: {wrong}"


def test_no_library_callback_annotates_its_trainer_as_any():
    bad = [f"{p.name}:{i}" for p in _library_callbacks() for i, line in enumerate(p.read_text().splitlines(), 1)
           if "trainer: Any" in line]
    assert not bad, bad


def test_the_trainer_has_every_member_of_the_view(make_trainer):
    trainer = make_trainer()
    missing = [name for name in sorted(view_members()) if not _has_static(trainer, name)]
    assert not missing, f"TrainerView promises members the Trainer lacks: {missing}"


def _has_static(obj: object, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True
