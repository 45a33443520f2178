"""Turn a script written for Lightning into one for this package by the renames docs/migrating.md lists, and
nothing else: what a user does with the page open beside the editor.

The rename table is read from the page itself (the "From Lightning" section), so a rename a script needs and the page
does not list makes the renamed script fail, and the page gets the row:

- the first paragraph's module and class renames (`` `lightning.pytorch` -> `trainer` ``, `` `LightningModule` ->
  `TrainModule` ``, ...): a module path is renamed by its longest listed prefix, the rest kept;
- each row of the *Names* table whose left cell names ``lightning.*`` objects: the full dotted name on the left
  becomes the one on the right (items paired in order; a short item after a dotted one shares its module).

``rename(source)`` rewrites the ``import``/``from ... import`` statements that name ``lightning`` modules, the dotted
uses of a module imported under an alias (``pl.callbacks.X``, ``L.LightningModule``), and every other use of a
renamed class or function name (``LightningModule`` -> ``TrainModule``), as a search-and-replace would.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"

_DOTTED = re.compile(r"`([A-Za-z_][\w.]*)`")
_INTRO_PAIR = re.compile(r"((?:`[\w.]+`(?:\s*,?\s*(?:and|or)?\s*)?)+)\s*->\s*`([\w.]+)`")


@dataclass
class RenameTable:
    modules: dict[str, str] = field(default_factory=dict)  # lightning module prefix -> trainer module
    names: dict[str, str] = field(default_factory=dict)  # full lightning dotted name -> full trainer dotted name
    short: dict[str, str] = field(default_factory=dict)  # a renamed class/function's own name -> its new name

    def resolve(self, dotted: str) -> str:
        """The trainer name of a full Lightning dotted name (a module or an object in one)."""
        if dotted in self.names:
            return self.names[dotted]
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self.modules:
                rest = parts[cut:]
                if rest:
                    rest[-1] = self.short.get(rest[-1], rest[-1])
                return ".".join([self.modules[prefix], *rest])
        return dotted


def _section(text: str) -> str:
    start = text.index("## From Lightning")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _items(cell: str) -> list[str]:
    """The backticked dotted names of a table cell, leaving out what is said in parentheses."""
    depth, kept = 0, []
    for ch in cell:
        depth += ch == "("
        if depth == 0:
            kept.append(ch)
        depth -= ch == ")" and depth > 0
    names, module = [], ""
    for name in _DOTTED.findall("".join(kept)):
        if "." in name:
            module = name.rsplit(".", 1)[0]
        elif module:
            name = f"{module}.{name}"
        names.append(name)
    return names


def load_table(doc: Path = DOC) -> RenameTable:
    section = _section(doc.read_text())
    table = RenameTable()
    intro = section.split("### ", 1)[0]
    for sources, target in _INTRO_PAIR.findall(" ".join(intro.split())):
        for source in re.findall(r"`([\w.]+)`", sources):
            if source.startswith("lightning"):
                table.modules[source] = target
            else:
                table.short[source] = target
    names_table = section.split("### Names", 1)[1].split("\n### ", 1)[0]
    for line in names_table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`lightning."):
            continue
        left, right = _items(cells[0]), _items(cells[1])
        if len(left) != len(right) or not all(r.startswith("trainer") for r in right):
            continue
        for source, target in zip(left, right):
            table.names[source] = target
            old, new = source.rsplit(".", 1)[1], target.rsplit(".", 1)[1]
            if old != new:
                if table.short.get(old, new) != new:
                    raise ValueError(f"docs/migrating.md renames {old} both to {table.short[old]} and to {new}")
                table.short[old] = new
    return table


def _rewrite_import(node: ast.Import | ast.ImportFrom, table: RenameTable, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Import):
        if not any(a.name.split(".")[0] == "lightning" for a in node.names):
            return None
        lines = []
        for a in node.names:
            target = table.resolve(a.name) if a.name.split(".")[0] == "lightning" else a.name
            if a.asname:
                aliases[a.asname] = a.name
                lines.append(f"import {target} as {a.asname}")
            else:  # `import lightning.pytorch` then `lightning.pytorch.X` in the code: rewritten with the code
                lines.append(f"import {target}")
        return "\n".join(lines)
    if not node.module or node.module.split(".")[0] != "lightning" or node.level:
        return None
    grouped: dict[str, list[str]] = {}
    for a in node.names:
        target = table.resolve(f"{node.module}.{a.name}")
        module, name = target.rsplit(".", 1)
        local = a.asname or a.name
        if a.asname is None and (name == a.name or table.short.get(a.name) == name):
            grouped.setdefault(module, []).append(name)  # the code's uses get the new name too
        else:
            grouped.setdefault(module, []).append(f"{name} as {local}")
    return "\n".join(f"from {module} import {', '.join(names)}" for module, names in grouped.items())


def rename(source: str, table: RenameTable | None = None) -> str:
    """The script with every Lightning name replaced by the one docs/migrating.md gives."""
    table = table or load_table()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    aliases: dict[str, str] = {}
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            new = _rewrite_import(node, table, aliases)
            if new is not None:
                edits.append((node.lineno, node.end_lineno, node.col_offset, new))
    for start, end, indent, new in sorted(edits, reverse=True):
        pad = lines[start - 1][:indent]
        lines[start - 1:end] = ["".join(f"{pad}{line}\n" for line in new.splitlines())]
    text = "".join(lines)

    # dotted uses through an alias (pl.loggers.CSVLogger, L.LightningModule) or a full path (lightning.pytorch.X)
    roots = dict(aliases)
    roots.setdefault("lightning", "lightning")

    def dotted(match: re.Match[str]) -> str:
        alias, chain = match.group(1), match.group(2)
        base = roots[alias]
        old = f"{base}{chain}"
        new = table.resolve(old)
        if alias == base:  # written in full: the new full path
            return new
        new_base = table.resolve(base)
        if new.startswith(new_base + "."):
            return alias + new[len(new_base):]
        return match.group(0)  # not expressible through this alias; left for the run to report

    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(roots, key=len, reverse=True)))
                         + r")((?:\.[A-Za-z_]\w*)+)")
    text = pattern.sub(dotted, text)
    # every remaining use of a renamed name (class bases, annotations, docstrings), as a search-and-replace does
    if table.short:
        words = re.compile(r"\b(" + "|".join(map(re.escape, sorted(table.short, key=len, reverse=True))) + r")\b")
        text = words.sub(lambda m: table.short[m.group(1)], text)
    return text
