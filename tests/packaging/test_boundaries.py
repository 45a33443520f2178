"""The boundary rules (tests/packaging/boundaries.py says each one) over the library -- trainer/,
callbacks/, strategies/ -- with the exceptions that are there today, each with its reason; and each
rule's checker fed the mutations it exists to catch (and clean code it must let pass), so a checker
that passes everything fails here.

An allowlist entry is (reason, files, texts): any finding whose text is one of ``texts`` in one of
``files`` passes. An entry that no longer matches in one of its files fails the test too, so the
lists only shrink: delete the entry (or the file from it) when its sites are gone."""

from __future__ import annotations

import ast
import collections
import functools
from typing import Callable, NamedTuple

import pytest

from tests import ROOT
from tests.packaging.boundaries import (CAPABILITY_FLAGS, DISTRIBUTED_TYPES, STRATEGY_CLASSES, STRATEGY_NAMES,
                                        Finding, class_members, find_dynamic_imports, find_private_uses,
                                        find_strategy_tests)

FOLDERS = {"trainer": ROOT / "trainer", "trainer.callbacks": ROOT / "callbacks",
           "trainer.strategies": ROOT / "strategies"}


class SourceFile(NamedTuple):
    path: str  # from the repository root: trainer/loops/fit_loop.py
    module: str  # trainer.loops.fit_loop
    is_package: bool
    text: str


@functools.lru_cache(maxsize=1)
def library() -> tuple[SourceFile, ...]:
    files = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            module = ".".join([package, *(parts[:-1] if is_package else parts)])
            files.append(SourceFile(path.relative_to(ROOT).as_posix(), module, is_package, path.read_text()))
    return tuple(files)


class Allowed(NamedTuple):
    reason: str
    files: tuple[str, ...]
    texts: tuple[str, ...]


# --- rule 1: privates --------------------------------------------------------------------------------

# private attribute names of third-party objects (no class of ours declares them: checked below)
FOREIGN_PRIVATES = {
    "_orig_mod": "torch.compile's OptimizedModule keeps the module it compiled there (torch's own way back)",
    "_num_samples": "torch's RandomSampler: None means len(dataset), which a re-dealt sampler must reproduce",
    "_metadata": "a torch state_dict's version metadata, kept when its keys are rewritten",
    "_parameters": "torch.nn.Module's own parameters (not its children's): finetuning's leaf modules",
    "_forward_cache": "torchmetrics' Metric: the value of its last forward, logged on step",
    "_option_string_actions": "argparse's option table: the closest option to a misspelt one",
    "_subcommands_action": "jsonargparse's subcommand action: the chosen subcommand's parser",
    "_name_parser_map": "argparse's subcommand table, same purpose",
    "_failures": "torch.distributed.elastic's process context: whether a rank failed (torchrun teardown)",
}

PRIVATE_ALLOWED = [
    Allowed("Accelerate's GradientState names, which Accelerate's own Accelerator and loaders call the same way",
            ("trainer/accelerate/accelerator.py", "trainer/accelerate/wrappers.py"),
            ("self.gradient_state._set_sync_gradients", "accelerator.gradient_state._add_dataloader",
             "accelerator.gradient_state._remove_dataloader")),
    Allowed("same room: skip_first_batches asks a prepared loader (wrappers.py) for the Accelerator that made it",
            ("trainer/accelerate/data_loader.py",), ("getattr(dataloader, '_accelerator', None)",)),
    Allowed("checkpoint restore reads the old state keys a callback answers to (EarlyStopping, ModelCheckpoint)",
            ("trainer/persistence/trainer_checkpoint.py",), ("getattr(cb, '_legacy_state_keys', ())",)),
    Allowed("loops/wiring.py is the Trainer constructor's checks, split out of trainer.py for it alone",
            ("trainer/trainer.py",),
            tuple(f"import trainer.loops.wiring.{name}" for name in (
                "_callback_list", "_check_barebones", "_check_checkpointing", "_check_module", "_check_num_nodes",
                "_check_plugins", "_convert_sync_batchnorm", "_shown", "_with_module_callbacks"))),
    Allowed("the Accelerator door's tracker names, from its tracking half (same room)",
            ("trainer/accelerate/accelerator.py",), ("import trainer.accelerate.tracking._tracker_specs",)),
    Allowed("the Accelerator's state uses the Trainer checkpoint's path-to-text rewrite (same room)",
            ("trainer/persistence/accelerator_state.py",),
            ("import trainer.persistence.trainer_checkpoint._paths_as_text",)),
    Allowed("the trackers reuse the CSV logger's value formatting (same package)",
            ("callbacks/trackers.py",), ("import trainer.callbacks.logger._plain",)),
]

# --- rule 2: dynamic imports -------------------------------------------------------------------------

DYNAMIC_IMPORTS_ALLOWED = [
    Allowed("the CLI builds the classes a config names by class path (LightningCLI's class_path/init_args), "
            "and suggests the closest parameter of one",
            ("trainer/cli/trainer_cli.py",), ("_instantiate", "_closest_parameter")),
    Allowed("an optional tracker (wandb, mlflow, tensorboard, ...) imported by name on first use, with the "
            "pip command when it is missing",
            ("callbacks/trackers.py",), ("_require",)),
]

# --- rule 3: questions about which strategy this is ---------------------------------------------------

STRATEGY_TESTS_ALLOWED = [
    Allowed("the launcher's config file (Accelerate's format) has a section per strategy: user input checked and "
            "read before any strategy exists, not a branch on a built one",
            ("trainer/cli/config_file.py", "trainer/cli/config.py", "trainer/cli/launch.py"),
            ("{'deepspeed': ..., 'fsdp': ...}", "self.strategy in ('deepspeed', 'fsdp')", "cfg.strategy == 'fsdp'",
             "cfg.strategy == 'single_device'")),
    Allowed("a pip distribution's name (the `trainer env` report), not a strategy", ("trainer/cli/env.py",),
            ("{'deepspeed': ...}",)),
    Allowed("the user's strategy= string checked against fsdp_plugin= before it becomes a strategy",
            ("trainer/accelerate/arguments.py",), ("strategy not in ('auto', 'fsdp')",)),
    Allowed("Accelerate's join_uneven_inputs follows accelerator.state.distributed_type, which Accelerate's users and "
            "its own test script set (test_join_raises_warning_for_non_ddp_distributed): the user's state, not a "
            "question to the strategy",
            ("trainer/accelerate/accelerator.py",),
            ("self.state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)",)),
]


# --- the scans ---------------------------------------------------------------------------------------

def _members() -> frozenset[str]:
    return frozenset(name for f in library() for name in class_members(f.text))


@functools.lru_cache(maxsize=4)
def _members_elsewhere(files: tuple[SourceFile, ...]) -> dict[str, frozenset[str]]:
    """For each file, the private names the classes of the library's other files declare."""
    declared = {f.path: class_members(f.text) for f in files}
    count = collections.Counter(name for names in declared.values() for name in names)
    return {path: frozenset(n for n in count if count[n] > (n in names)) for path, names in declared.items()}


def _scan(finder: Callable[[SourceFile], list[Finding]], files: tuple[SourceFile, ...],
          allowed: list[Allowed]) -> tuple[list[str], list[str]]:
    """(findings no entry allows, entries that match nothing in one of their files)."""
    found = {f.path: finder(f) for f in files}
    new = [f"{path}:{hit.line}: {hit.text}" for path, hits in found.items() for hit in hits
           if not any(path in entry.files and hit.text in entry.texts for entry in allowed)]
    stale = []
    for entry in allowed:
        for path in entry.files:
            if not any(hit.text in entry.texts for hit in found.get(path, [])):
                stale.append(f"{path}: no longer has any of {entry.texts} ({entry.reason})")
        matched = {hit.text for path in entry.files for hit in found.get(path, [])}
        stale += [f"{text!r} is no longer in any of {entry.files}" for text in entry.texts if text not in matched]
    return new, stale


def _private_scan(files: tuple[SourceFile, ...] | None = None) -> tuple[list[str], list[str]]:
    files = files or library()
    elsewhere, foreign = _members_elsewhere(files), frozenset(FOREIGN_PRIVATES)
    return _scan(lambda f: _private_uses(f.text, f.module, f.is_package, foreign, elsewhere[f.path]), files,
                 PRIVATE_ALLOWED)


@functools.lru_cache(maxsize=1024)
def _private_uses(*args: object) -> list[Finding]:  # the library is scanned once for several tests
    return find_private_uses(*args)  # type: ignore[arg-type]


def _dynamic_import_scan(files: tuple[SourceFile, ...] | None = None) -> tuple[list[str], list[str]]:
    return _scan(lambda f: find_dynamic_imports(f.text), files or library(), DYNAMIC_IMPORTS_ALLOWED)


def _strategy_scan(files: tuple[SourceFile, ...] | None = None) -> tuple[list[str], list[str]]:
    outside = tuple(f for f in files or library() if not f.module.startswith("trainer.strategies"))
    return _scan(lambda f: find_strategy_tests(f.text), outside, STRATEGY_TESTS_ALLOWED)


def test_no_code_uses_a_private_of_another_object_or_module():
    new, _ = _private_scan()
    assert not new, ("these use a private name of an object or module they do not own (directly, through a "
                     "local alias, or with getattr); make what they need a public, documented member, or hand it "
                     "over explicitly (tests/packaging/boundaries.py, rule 1):\n" + "\n".join(new))


def test_no_dynamic_import_outside_the_allowlist():
    new, _ = _dynamic_import_scan()
    assert not new, ("importlib.import_module / __import__ hide a dependency from the import graph "
                     "(test_import_graph.py) and from readers; import normally, or, for an optional integration, "
                     "add the site to DYNAMIC_IMPORTS_ALLOWED with its reason:\n" + "\n".join(new))


def test_no_strategy_is_asked_what_it_is_outside_strategies():
    new, _ = _strategy_scan()
    assert not new, ("these branch on a strategy's name, kind, class or capability flag outside strategies/; "
                     "move the branch into a method of the strategy (or of the object it returns) and call it "
                     "(what a strategy cannot do is told to it: strategy.refuse_unsupported(feature, asked, fix) refuses "
                     "with its own reason):\n" + "\n".join(new))


@pytest.mark.parametrize("scan", [_private_scan, _dynamic_import_scan, _strategy_scan])
def test_every_allowlist_entry_is_still_needed(scan):
    _, stale = scan()
    assert not stale, "these sites are gone; shrink the allowlist to match:\n" + "\n".join(stale)


def test_the_foreign_private_names_are_not_declared_by_our_classes():
    """An exemption for a third-party object's private may not hide one of ours of the same name."""
    ours = sorted(set(FOREIGN_PRIVATES) & _members())
    assert not ours, f"{ours}: declared by a class of ours, so not a third-party name to exempt"
    text = "".join(f.text for f in library())
    unused = [name for name in FOREIGN_PRIVATES if f".{name}" not in text and repr(name) not in text
              and f'"{name}"' not in text]
    assert not unused, f"{unused}: no longer used; delete them from FOREIGN_PRIVATES"


def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text())


def test_the_vocabulary_names_every_registered_strategy_and_kind():
    """Read from the source (no torch import): the registry's names, Accelerate's DistributedType
    members and the concrete strategy classes are all in the checker's vocabulary."""
    registry = next(n for n in ast.walk(_tree("strategies/registry.py")) if isinstance(n, (ast.Assign, ast.AnnAssign))
                    and "STRATEGIES" in ast.unparse(n.targets[0] if isinstance(n, ast.Assign) else n.target))
    names = {k.value.lower() for k in registry.value.keys}
    assert names - {"auto"} <= STRATEGY_NAMES, names - {"auto"} - STRATEGY_NAMES
    kinds = next(n for n in ast.walk(_tree("trainer/accelerate/operations.py"))
                 if isinstance(n, ast.ClassDef) and n.name == "DistributedType")
    members = {t.id for stmt in kinds.body if isinstance(stmt, ast.Assign) for t in stmt.targets}
    assert members == DISTRIBUTED_TYPES, members ^ DISTRIBUTED_TYPES
    concrete = {n.name for path in (ROOT / "strategies").glob("*.py") for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "Strategy" for b in n.bases)}
    assert concrete and concrete <= STRATEGY_CLASSES, concrete - STRATEGY_CLASSES


# --- each checker catches its mutations -------------------------------------------------------------

# issue 26's mutations that the earlier tests let pass, written into a real file of the library
LIBRARY_MUTATIONS = {
    "aliasing": (_private_scan, "trainer/loops/fit_loop.py",
                 "def probe(trainer):\n    t = trainer\n    return t._metrics\n", "t._metrics"),
    "the Accelerator's privates": (_private_scan, "trainer/persistence/accelerator_state.py",
                                   "def probe(accelerator):\n    return accelerator._models\n", "accelerator._models"),
    "a kind tuple": (_strategy_scan, "callbacks/model_checkpoint.py",
                     "def probe(kind):\n    return kind in ('DEEPSPEED', 'FSDP')\n", "kind in ('DEEPSPEED', 'FSDP')"),
    "import_module": (_dynamic_import_scan, "trainer/accelerate/accelerator.py",
                      "def probe(name):\n    import importlib\n    return importlib.import_module(name)\n", "probe"),
}


@pytest.mark.parametrize("name", LIBRARY_MUTATIONS)
def test_a_mutation_written_into_the_library_fails_the_scan(name):
    scan, path, code, text = LIBRARY_MUTATIONS[name]
    files = tuple(f._replace(text=f"{f.text}\n\n{code}") if f.path == path else f for f in library())
    new, _ = scan(files)
    assert any(line.startswith(f"{path}:") and line.endswith(f": {text}") for line in new), new

PRIVATE_MUTATIONS = {
    "an alias of the trainer": "def f(trainer):\n    t = trainer\n    return t._metrics\n",
    "an alias of an attribute": "class A:\n    def f(self):\n        t = self.trainer\n        return t._metrics\n",
    "the Accelerator's privates": "def save(accelerator):\n    return [m for m in accelerator._models]\n",
    "a chain through self": "class A:\n    def f(self):\n        return self._trainer._fit_loop\n",
    "getattr with a constant": "def f(trainer):\n    return getattr(trainer, '_metrics', None)\n",
    "setattr with a constant": "def f(module, r):\n    setattr(module, '_results', r)\n",
    "vars()": "def f(loop):\n    return vars(loop)['_state']\n",
    "an alias of an alias": "def f(trainer):\n    a = trainer\n    b = a\n    return b._x\n",
    "self reassigned": "class A:\n    def f(self, other):\n        me = self\n        me = other\n"
                       "        return me._x\n",
    "a private module of another package":
        "from trainer.strategies._util import rank_zero_info\n",
    "a private function of another module": "from trainer.loops.hooks import _add_note\n",
    "a private of an imported class": "from trainer.accelerate.accelerator import Accelerator\nAccelerator._check()\n",
    "a private of an imported module": "import trainer.loops.hooks as hooks\nhooks._add_note(1, 2)\n",
    "another class's private, written": "def f(module):\n    module._no_log_hook = None\n",  # M declares it
    "a private declared here and by another module's class":
        "class Loop:\n    def __init__(self, trainer):\n        self._trainer = trainer\n\n"
        "    def attach(self, module):\n        module._trainer = self._trainer\n",
}

PRIVATE_CLEAN = {
    "self and cls": "class A:\n    def f(self):\n        return self._x\n\n    @classmethod\n"
                    "    def g(cls):\n        return cls._y\n",
    "an alias of self": "class A:\n    def f(self):\n        me = self\n        return me._x\n",
    "super() and type(self)": "class A(B):\n    def f(self):\n        return super()._x + type(self)._y\n",
    "a lambda property": "class A:\n    x = property(lambda self: self._x)\n",
    "self in a nested function": "class A:\n    def f(self):\n        def g():\n            return self._x\n"
                                 "        return g\n",
    "an instance of the module's class": "class A:\n    def copy(self):\n        new = A()\n        new._x = 1\n"
                                         "        return new\n\n\ndef f(a: 'A | None'):\n    return a._x\n",
    "copy.copy(self)": "import copy\n\n\nclass A:\n    def f(self):\n        c = copy.copy(self)\n"
                       "        c._x = 1\n",
    "a third-party module": "import torch\nimport sys\ntorch._dynamo.reset()\nsys._getframe()\n",
    "a named tuple's API": "def f(batch):\n    return batch._fields, batch._asdict()\n",
    "this module's own marker": "def f(err):\n    err._reported = True\n    return getattr(err, '_reported')\n",
    "another instance of the module's class": "class A:\n    def __init__(self):\n        self._x = 1\n\n"
                                              "    def __eq__(self, other):\n        return self._x == other._x\n",
    "a public attribute": "def f(trainer):\n    t = trainer\n    return t.global_step, trainer.__class__\n",
    "a private module inside its package": "from trainer.strategies._util import quoted\n",
}


@pytest.mark.parametrize("name", PRIVATE_MUTATIONS)
def test_the_private_checker_catches(name):
    module = "trainer.strategies.ddp" if "inside its package" in name else "trainer.persistence.accelerator_state"
    members = frozenset({"_no_log_hook", "_results", "_trainer"})  # declared by classes of other modules
    assert find_private_uses(PRIVATE_MUTATIONS[name], module, members=members), name


@pytest.mark.parametrize("name", PRIVATE_CLEAN)
def test_the_private_checker_lets_pass(name):
    module = "trainer.strategies.ddp" if "inside its package" in name else "trainer.persistence.accelerator_state"
    assert find_private_uses(PRIVATE_CLEAN[name], module) == [], name


DYNAMIC_IMPORT_MUTATIONS = {
    "importlib.import_module": "import importlib\n\n\ndef f(name):\n    return importlib.import_module(name)\n",
    "an imported import_module": "from importlib import import_module as load\nload('x')\n",
    "__import__": "def f():\n    return __import__('deepspeed')\n",
    "importlib under another name": "import importlib as il\nil.import_module('x')\n",
    "getattr on importlib": "import importlib\ngetattr(importlib, 'import_module')('x')\n",
}
DYNAMIC_IMPORT_CLEAN = {
    "a plain import": "def f():\n    import deepspeed\n    return deepspeed\n",
    "find_spec": "import importlib.util\nimportlib.util.find_spec('deepspeed')\n",
    "a method of that name on another object": "def f(loader):\n    return loader.import_module('x')\n",
}


@pytest.mark.parametrize("name", DYNAMIC_IMPORT_MUTATIONS)
def test_the_dynamic_import_checker_catches(name):
    assert find_dynamic_imports(DYNAMIC_IMPORT_MUTATIONS[name]), name


@pytest.mark.parametrize("name", DYNAMIC_IMPORT_CLEAN)
def test_the_dynamic_import_checker_lets_pass(name):
    assert find_dynamic_imports(DYNAMIC_IMPORT_CLEAN[name]) == [], name


def test_a_dynamic_import_is_named_by_its_function():
    source = "import importlib\n\n\nclass Loader:\n    def load(self, n):\n        return importlib.import_module(n)\n"
    assert find_dynamic_imports(source) == [Finding(6, "Loader.load")]


STRATEGY_MUTATIONS = {
    "a kind tuple": "def f(strategy):\n    kind = strategy.kind\n    return kind in ('DEEPSPEED', 'FSDP')\n",
    "a name comparison": "def f(name):\n    if name == 'ddp':\n        return 1\n",
    "a name in any case": "def f(name):\n    return name.lower() != 'DeepSpeed'\n",
    "Accelerate's enum": "def f(state):\n    return state.distributed_type == DistributedType.MULTI_GPU\n",
    "a prefix": "def f(name):\n    return name.startswith('deepspeed')\n",
    "isinstance": "from trainer.strategies.deepspeed import DeepSpeedStrategy\n\n\n"
                  "def f(s):\n    return isinstance(s, DeepSpeedStrategy)\n",
    "isinstance of a tuple": "def f(s):\n    return isinstance(s, (DDPStrategy, strategies.FSDPStrategy))\n",
    "isinstance of an alias": "from trainer.strategies.fsdp import FSDPStrategy as F\n\n\n"
                              "def f(s):\n    return isinstance(s, F)\n",
    "type is": "def f(s):\n    return type(s) is DDPStrategy\n",
    "a class name as text": "def f(s):\n    return type(s).__name__ == 'DeepSpeedStrategy'\n",
    "a table keyed by name": "MERGERS = {'fsdp-dcp': merge_dcp, 'deepspeed': merge_ds}\n",
    "a capability flag": "def f(strategy):\n    if strategy.sharded_format:\n        return 1\n",
    "an aliased flag": "def f(trainer):\n    s = trainer.strategy\n    return s.has_engine\n",
    "a flag by getattr": "def f(s):\n    return getattr(s, 'can_stage_sharded', False)\n",
    "match": "def f(name):\n    match name:\n        case 'fsdp':\n            return 1\n",
}
STRATEGY_CLEAN = {
    "a refusal": "def f(strategy):\n    strategy.refuse_unsupported('oom_split', 'Trainer(oom_split=True)', 'Fix.')\n",
    "a name as a setting": "def f():\n    return Trainer(strategy='ddp')\n",
    "a name in a message": "raise ValueError(\"use strategy='fsdp'\")\n",
    "the base class": "def f(s):\n    return isinstance(s, Strategy)\n",
    "a method of the strategy": "def f(strategy, state, path):\n    strategy.save_checkpoint(state, path)\n",
    "an unrelated comparison": "def f(stage):\n    return stage == 'fit' and stage in ('auto', 'cpu')\n",
}


@pytest.mark.parametrize("name", STRATEGY_MUTATIONS)
def test_the_strategy_question_checker_catches(name):
    assert find_strategy_tests(STRATEGY_MUTATIONS[name]), name


@pytest.mark.parametrize("name", STRATEGY_CLEAN)
def test_the_strategy_question_checker_lets_pass(name):
    assert find_strategy_tests(STRATEGY_CLEAN[name]) == [], name
