"""The boundary rules of the house, as a checker over the source (no import, no execution): each
``find_*`` function takes one file's text and its dotted module name and returns what it breaks.
tests/packaging/test_boundaries.py runs them over the library and over small snippets (each rule's
mutation must be caught, a clean snippet must not be).

1. ``find_private_uses``: a private name (``_x``, not a dunder) is used only inside what owns it.
   The object's own: ``self._x`` / ``cls._x`` (the first parameter of a method, ``super()``,
   ``type(self)``, ``copy.copy(self)``, a local every assignment of which is one of those). The
   module's own (the module is the unit of privacy, as in Python's convention): ``Foo._x``,
   ``Foo()._x``, a local built from or annotated with ``Foo`` when ``Foo`` is defined in the module;
   any object's ``_x`` when only classes defined in the module declare ``_x`` (``other._x`` in
   ``__eq__``); a private the module sets on an object it does not own and no class of ours declares
   (its marker: ``err._trainer_reported = True``). A package's own: a private module or name
   (``from trainer.strategies._util import f``) is usable by the code inside that package or module.
   Everything else is a use of another object's private, however it is reached: ``trainer._x``,
   ``t = trainer; t._x``, ``self._trainer._x``, ``getattr(x, "_x")`` (and ``setattr``/``hasattr``/
   ``delattr``), ``vars(x)["_x"]``, ``from trainer.loops.hooks import _f``. Third-party privates
   (``torch._dynamo``, ``sys._getframe``, and the attribute names the caller lists as foreign) are
   outside the rule: it guards the seams between our rooms, not torch's.
2. ``find_dynamic_imports``: ``importlib.import_module`` / ``__import__`` (also under another name,
   ``from importlib import import_module as load``), reported with the function that does it.
3. ``find_strategy_tests``: a question about which strategy this is, asked outside strategies/:
   a comparison, membership or ``startswith`` against a strategy's name, kind or format
   (``kind in ("DEEPSPEED", ...)``, ``name == "ddp"``, ``DistributedType.FSDP``, ``"fsdp-dcp"``), a
   table keyed by such names, ``isinstance``/``issubclass``/``type(x) is`` against a concrete strategy
   class, and reading a capability flag (``sharded_format``, ``has_engine``, ...). The rule: a caller
   never branches on what a strategy *is* or *has*; it calls a method of the strategy (or of an object
   the strategy returned) that does the work. What a strategy cannot do is told to it, not asked:
   ``strategy.refuse_unsupported(feature, asked, fix)`` raises (or warns) with the strategy's own reason,
   so the decision and its wording stay in the strategy.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import Iterator

# --- vocabulary of rule 3 -----------------------------------------------------------------------------

# the registry's names (strategies/registry.py STRATEGIES, less "auto", which also names devices and
# precisions), the sharded checkpoint formats, and the strategies' class names; compared without case
STRATEGY_NAMES = frozenset({
    "single_device", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false", "fsdp", "fsdp2", "fsdp-dcp", "deepspeed", "deepspeed_stage_1",
    "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
    "multi_cpu", "multi_gpu", "ddpstrategy", "fsdpstrategy", "deepspeedstrategy", "singledevicestrategy",
})
# Accelerate's DistributedType members: as attributes (``DistributedType.FSDP``) they only name a kind
DISTRIBUTED_TYPES = frozenset({"NO", "MULTI_CPU", "MULTI_GPU", "FSDP", "DEEPSPEED", "MULTI_XPU", "MULTI_NPU",
                               "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_HPU", "MULTI_NEURON", "XLA",
                               "MEGATRON_LM"})
STRATEGY_CLASSES = frozenset({"DDPStrategy", "FSDPStrategy", "DeepSpeedStrategy", "SingleDeviceStrategy"})
CAPABILITY_FLAGS = frozenset({"sharded_format", "has_engine", "supports_gradient_correction",
                              "can_stage_sharded", "distributed_kind"})
ATTRIBUTE_FUNCTIONS = ("getattr", "setattr", "hasattr", "delattr")
# the named tuple's public API, underscored so as not to clash with field names
PUBLIC_BY_PROTOCOL = frozenset({"_fields", "_asdict", "_replace", "_make", "_field_defaults"})
COPIES = frozenset({"copy.copy", "copy.deepcopy"})


@dataclass(frozen=True)
class Finding:
    line: int
    text: str  # what the allowlists name: the expression as written (ast.unparse), or the function

    def __str__(self) -> str:
        return f"{self.line}: {self.text}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _constant_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@functools.lru_cache(maxsize=512)
def _parse(source: str) -> tuple[ast.Module, tuple[ast.AST, ...]]:
    """The tree and all its nodes, parsed once for the three rules."""
    tree = ast.parse(source)
    return tree, tuple(ast.walk(tree))


# --- where each name comes from ---------------------------------------------------------------------

def _imports(nodes: tuple[ast.AST, ...], module: str, is_package: bool) -> dict[str, str]:
    """Local name -> the dotted name it was imported as, for every import in the file (flow-insensitive)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    names = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[:len(here) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


class _Scope:
    """One function's view: its parameters and local names, which of them are the object itself
    (``self``) and which hold something the module owns (built from, or annotated with, its class)."""

    def __init__(self, node: ast.AST, parent: _Scope | None, in_class: bool, checker: _PrivateChecker):
        self.node, self.parent, self.checker = node, parent, checker
        self._locals: dict[str, list[ast.AST | None]] | None = None  # built when first asked (few functions are)
        self.own_annotated: set[str] = set()
        args = node.args
        static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in getattr(node, "decorator_list", []))
        first = (args.posonlyargs + args.args)[:1]
        self.selves = {first[0].arg} if in_class and first and not static else set()

    @property
    def locals(self) -> dict[str, list[ast.AST | None]]:
        """Name -> the values assigned to it in this function (None: not known, a parameter, a loop variable)."""
        if self._locals is None:
            self._locals = {}
            args = self.node.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            params += [a for a in (args.vararg, args.kwarg) if a is not None]
            for param in params:
                self._locals[param.arg] = [None] if param.arg not in self.selves else [ast.Name("self")]
                if param.annotation is not None and self.checker.names_own_class(param.annotation):
                    self.own_annotated.add(param.arg)
            body = self.node.body if isinstance(self.node.body, list) else [self.node.body]
            stack = list(body)
            while stack:  # the function's own statements, not those of functions or classes inside it
                sub = stack.pop()
                self._record(sub)
                if not isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                    stack.extend(ast.iter_child_nodes(sub))
        return self._locals

    def _record(self, node: ast.AST) -> None:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                value = node.value if isinstance(target, ast.Name) else None
                for name in _target_names(target):
                    self._locals.setdefault(name, []).append(value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            if isinstance(node.target, ast.Name):
                value = node.value if not isinstance(node, ast.AugAssign) else None
                self._locals.setdefault(node.target.id, []).append(value)
                if isinstance(node, ast.AnnAssign) and self.checker.names_own_class(node.annotation):
                    self.own_annotated.add(node.target.id)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            for name in _target_names(node.target):
                self._locals.setdefault(name, []).append(None)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            for name in _target_names(node.optional_vars):
                self._locals.setdefault(name, []).append(None)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self._locals.setdefault(node.name, []).append(None)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self._locals.setdefault(node.name, []).append(None)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                self._locals.setdefault(name, []).append(ast.Name(f"__import__:{name}"))

    def lookup(self, name: str) -> tuple[_Scope | None, list[ast.AST | None] | None]:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.locals:
                return scope, scope.locals[name]
            scope = scope.parent
        return None, None


def _target_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _target_names(t)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


class _PrivateChecker(ast.NodeVisitor):
    def __init__(self, source: str, module: str, is_package: bool, foreign: frozenset[str],
                 members: frozenset[str]):
        self.tree, nodes = _parse(source)
        self.foreign = foreign
        # this module's own markers: privates it sets on objects it does not own and no class declares
        self.tags = {n.attr for n in nodes if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        self.tags |= {_constant_str(n.args[1]) or "" for n in nodes if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Name) and n.func.id == "setattr" and len(n.args) >= 2}
        self.own_members = class_members(source) - members  # the privates only the classes defined here declare
        self.tags = {t for t in self.tags if is_private(t)} - members - self.own_members
        self.module = module
        self.imports = _imports(nodes, module, is_package)
        self.own_defs = {n.name for n in nodes if isinstance(n, ast.ClassDef)}
        self.own_defs |= {n.name for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.module_scope: dict[str, list[ast.AST | None]] = {}
        holder = _Scope.__new__(_Scope)
        holder._locals, holder.own_annotated, holder.checker = self.module_scope, set(), self
        for stmt in self.tree.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                holder._record(stmt)
        self.found: list[Finding] = []
        self.scope: _Scope | None = None
        self.class_depth: list[bool] = []  # whether the next function down is a method

    # which class an annotation or a call names
    def names_own_class(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return False
        if isinstance(node, ast.Name):
            return node.id in self.own_defs and node.id not in self.imports
        if isinstance(node, ast.BinOp):  # Foo | None
            return self.names_own_class(node.left) or self.names_own_class(node.right)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Optional", "typing.Optional"):
            return self.names_own_class(node.slice)
        return False

    def _dotted(self, node: ast.AST) -> str | None:
        """The dotted name an expression resolves to through the imports and the module's own top-level
        names (``torch.distributed`` -> "torch.distributed", ``Foo`` -> "<this module>.Foo"), or None."""
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        if not isinstance(node, ast.Name):
            return None
        if self.scope is not None:
            scope, values = self.scope.lookup(node.id)
            if scope is not None:
                if values and all(isinstance(v, ast.Name) and v.id == f"__import__:{node.id}" for v in values):
                    return self.imports.get(node.id)
                return None
        if node.id in self.imports:
            return self.imports[node.id]
        if node.id in self.own_defs:
            return f"{self.module}.{node.id}"
        return None

    def _is_self(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super":
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type" \
                and len(node.args) == 1:
            return self._is_self(node.args[0], seen)
        if isinstance(node, ast.Attribute) and node.attr == "__class__":
            return self._is_self(node.value, seen)
        if not isinstance(node, ast.Name) or self.scope is None or node.id in seen:
            return False
        scope, values = self.scope.lookup(node.id)
        if scope is None:
            return False
        if node.id in scope.selves and len(values) == 1:
            return True
        inner = seen | {node.id}
        return bool(values) and all(v is not None and self._is_self(v, inner) for v in values)

    def _is_own_object(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
        """An object the module owns: an instance of one of its classes, built or annotated here."""
        if isinstance(node, ast.Call):
            func = node.func
            if self._is_own_expression(func) or self._is_self(func):  # Foo(...), cls(...), type(self)(...)
                return True
            if (isinstance(func, ast.Attribute) and func.attr == "__new__" or self._dotted(func) in COPIES) \
                    and node.args:  # Foo.__new__(cls), copy.copy(self)
                return any(self._is_own_expression(a) or self._is_self(a) or self._is_own_object(a, seen)
                           for a in node.args[:1])
            return False
        if not isinstance(node, ast.Name) or node.id in seen:
            return False
        scope, values = self.scope.lookup(node.id) if self.scope is not None else (None, None)
        if scope is None:  # a module-level name
            values = self.module_scope.get(node.id)
            return bool(values) and all(v is not None and self._is_own_object(v, seen | {node.id}) for v in values)
        if node.id in scope.own_annotated:
            return True
        inner = seen | {node.id}
        return bool(values) and all(
            v is not None and (self._is_own_object(v, inner) or self._is_self(v, inner)) for v in values)

    def _is_own_expression(self, node: ast.AST) -> bool:
        """A name (or dotted name) that is this module's own, or, for our package, inside which this module
        lives (``_util`` of trainer.strategies, from trainer/strategies/ddp.py)."""
        dotted = self._dotted(node)
        return dotted is not None and self._owns(dotted)

    def _owns(self, dotted: str) -> bool:
        return self.module == dotted or self.module.startswith(dotted + ".") or dotted.startswith(self.module + ".")

    def _check(self, receiver: ast.AST, name: str, node: ast.AST) -> None:
        if not is_private(name) or name in PUBLIC_BY_PROTOCOL or name in self.foreign or name in self.tags \
                or name in self.own_members:
            return
        if self._is_self(receiver) or self._is_own_object(receiver):
            return
        dotted = self._dotted(receiver)
        if dotted is not None:
            if dotted.split(".")[0] != "trainer" or self._owns(dotted):
                return  # a third-party module's private, or our own namespace's
        self.found.append(Finding(node.lineno, ast.unparse(node)))

    # visiting
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in [*node.bases, *node.keywords, *node.decorator_list]:
            self.visit(child)
        self.class_depth.append(True)
        for stmt in node.body:
            self.visit(stmt)
        self.class_depth.pop()

    def _visit_function(self, node: ast.AST) -> None:
        in_class = bool(self.class_depth) and self.class_depth[-1]  # a method (or a lambda in a class body)
        for child in [*getattr(node, "decorator_list", []), *node.args.defaults,
                      *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(child)
        outer = self.scope
        self.scope = _Scope(node, outer, in_class, self)
        self.class_depth.append(False)
        for stmt in (node.body if isinstance(node.body, list) else [node.body]):
            self.visit(stmt)
        self.class_depth.pop()
        self.scope = outer

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check(node.value, node.attr, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2:
            name = _constant_str(node.args[1])
            if name is not None:
                self._check(node.args[0], name, node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        key = _constant_str(node.slice)
        value = node.value
        if key is not None:
            if isinstance(value, ast.Attribute) and value.attr == "__dict__":
                self._check(value.value, key, node)
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "vars" \
                    and value.args:
                self._check(value.args[0], key, node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            local = alias.asname or alias.name
            dotted = self.imports.get(local, "")
            self._check_import(dotted, node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_import(alias.name, node)

    def _check_import(self, dotted: str, node: ast.AST) -> None:
        """``from trainer.strategies._util import f`` is reported as "import trainer.strategies._util", once a line."""
        parts = dotted.split(".")
        if parts[0] != "trainer":
            return
        for i, part in enumerate(parts[1:], start=1):
            if is_private(part) and not self._owns(".".join(parts[:i])):
                finding = Finding(node.lineno, "import " + ".".join(parts[:i + 1]))
                if finding not in self.found:
                    self.found.append(finding)
                return


def class_members(source: str) -> set[str]:
    """The private names the classes of ``source`` declare: ``self._x = ...`` in a method, ``_x = ...``,
    ``_x: T`` or ``def _x`` in a class body."""
    _, nodes = _parse(source)
    names = set()
    for node in nodes:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(stmt.name)
                elif isinstance(stmt, ast.Assign):
                    names.update(n for t in stmt.targets for n in _target_names(t))
                elif isinstance(stmt, ast.AnnAssign):
                    names.update(_target_names(stmt.target))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) \
                and node.value.id in ("self", "cls"):
            names.add(node.attr)
    return {n for n in names if is_private(n)}


def find_private_uses(source: str, module: str = "trainer.somewhere", is_package: bool = False,
                      foreign: frozenset[str] = frozenset(), members: frozenset[str] = frozenset()) -> list[Finding]:
    """``foreign``: private attribute names of third-party objects that are not ours to judge
    (``_orig_mod`` of torch.compile's wrapper); the caller checks that no code of ours declares them.
    ``members``: the private names the classes of the *other* modules of the library declare
    (``class_members``). A private that only this module's classes declare may be used on any object
    here; one another module's class also declares (``_trainer`` of a loop and of the module) is
    that object's, not this module's. A private this module sets on another object and no class
    declares is the module's own marker (``err._trainer_reported = True``)."""
    checker = _PrivateChecker(source, module, is_package, foreign, members)
    checker.visit(checker.tree)
    return checker.found


# --- rule 2 --------------------------------------------------------------------------------------------

def find_dynamic_imports(source: str) -> list[Finding]:
    """Each call of ``importlib.import_module`` or ``__import__`` (under any name), as ``<function>: <call>``."""
    tree, nodes = _parse(source)
    loaders = {"__import__", "builtins.__import__", "importlib.import_module", "importlib.__import__"}
    local = {}  # local name -> what it is, for ``import importlib as il`` and ``from importlib import import_module``
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("importlib", "builtins"):
                    local[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in ("importlib", "builtins") and not node.level:
            for alias in node.names:
                local[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []

    def resolve(node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return local.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            return f"{resolve(node.value)}.{node.attr}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and len(node.args) >= 2 and _constant_str(node.args[1]):
            return f"{resolve(node.args[0])}.{_constant_str(node.args[1])}"
        return ""

    def visit(node: ast.AST, where: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            where = node.name if where == "<module>" else f"{where}.{node.name}"
        if isinstance(node, ast.Call) and resolve(node.func) in loaders:
            found.append(Finding(node.lineno, where))
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(tree, "<module>")
    return found


# --- rule 3 --------------------------------------------------------------------------------------------

def _names_a_strategy(node: ast.AST) -> bool:
    """A strategy's name, kind or class as a constant: "ddp", "DEEPSPEED", DistributedType.FSDP, a tuple of them."""
    text = _constant_str(node)
    if text is not None:
        return text.lower() in STRATEGY_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in DISTRIBUTED_TYPES or node.attr in STRATEGY_CLASSES
    if isinstance(node, ast.Name):
        return node.id in STRATEGY_CLASSES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_strategy(e) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set", "tuple"):
        return any(_names_a_strategy(a) for a in node.args)
    return False


def _strategy_classes(nodes: tuple[ast.AST, ...]) -> set[str]:
    """The local names of the concrete strategy classes (``from ...deepspeed import DeepSpeedStrategy as DS``)."""
    names = set(STRATEGY_CLASSES)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.name in STRATEGY_CLASSES and a.asname}
    return names


def find_strategy_tests(source: str) -> list[Finding]:
    _, nodes = _parse(source)
    classes = _strategy_classes(nodes)
    found = []

    def names_class(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in classes
        if isinstance(node, ast.Attribute):
            return node.attr in classes
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_class(e) for e in node.elts)
        if isinstance(node, ast.BinOp):  # DDPStrategy | FSDPStrategy
            return names_class(node.left) or names_class(node.right)
        return False

    for node in nodes:
        hit = False
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            hit = any(_names_a_strategy(s) or names_class(s) for s in sides)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                hit = names_class(node.args[1])
            elif isinstance(func, ast.Attribute) and func.attr in ("startswith", "endswith") and node.args:
                hit = _names_a_strategy(node.args[0])
            elif isinstance(func, ast.Name) and func.id in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2:
                hit = _constant_str(node.args[1]) in CAPABILITY_FLAGS
        elif isinstance(node, ast.Dict):  # a table keyed by strategy names
            hit = any(k is not None and _names_a_strategy(k) for k in node.keys)
        elif isinstance(node, ast.Attribute):
            hit = node.attr in CAPABILITY_FLAGS
        elif isinstance(node, ast.MatchValue):
            hit = _names_a_strategy(node.value)
        if hit:
            text = ast.unparse(node)
            if isinstance(node, ast.Dict):  # the keys that name strategies, not the whole table
                text = "{" + ", ".join(f"{ast.unparse(k)}: ..." for k in node.keys
                                       if k is not None and _names_a_strategy(k)) + "}"
            found.append(Finding(node.lineno, text))
    return found
