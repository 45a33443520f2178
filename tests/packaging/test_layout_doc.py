"""docs/layout.md and the README's Layout table against the code. docs/layout.md names every module of the
library under its room, and no module that is not there. The README's table: every room of the source tree has a row, every row is a room,
and what a room imports of the others (read from the source, top-level and function-level imports alike) is
what its row says -- no more (an undeclared dependency) and no less (a stale row)."""

from __future__ import annotations

import re

from tests import ROOT
from tests.packaging.test_import_graph import _graph

ROOM_FOLDERS = {"strategies": "strategies/", "callbacks": "callbacks/"}  # the two installed top-level folders


def _room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("callbacks", "strategies"):
        return parts[1]
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / "trainer" / parts[1] / "__init__.py").exists()):
        return parts[1]
    return "root"


def _rows() -> dict[str, set[str]]:
    """README's Layout table: room name -> the rooms its row says it imports."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        folder = re.match(r"`([^`]+)`", cells[0]).group(1)
        room = "root" if folder == "trainer/" else folder.rstrip("/").split("/")[-1]
        imports = cells[2].split("(")[0]
        declared = set() if imports.startswith("nothing") else {w.strip() for w in imports.split(",")}
        rows[room] = declared
    return rows


def _actual() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for module, deps in _graph().items():
        room = _room_of(module)
        found.setdefault(room, set()).update(_room_of(d) for d in deps)
    return {room: deps - {room} for room, deps in found.items()}


def test_every_room_has_a_row_and_every_row_is_a_room():
    rows, actual = _rows(), _actual()
    assert set(rows) == set(actual), (f"rooms in the code but not in README's Layout: {sorted(set(actual) - set(rows))}; "
                                      f"rows for no room: {sorted(set(rows) - set(actual))}")


def test_each_rooms_imports_are_what_its_row_says():
    rows, actual = _rows(), _actual()
    wrong = []
    for room in sorted(actual):
        declared = {"root" if d.startswith("every room") else d for d in rows.get(room, set())}
        if "every room" in " ".join(rows.get(room, ())):
            continue  # the root's row: the Trainer wires every room
        if actual[room] != declared:
            wrong.append(f"{room}: imports {sorted(actual[room])}, README says {sorted(declared)}")
    assert not wrong, "README's Layout table and the code differ:\n" + "\n".join(wrong)


def test_the_checker_sees_a_changed_row():
    """The parser reads the table (a row dropped or a dependency added shows up as a difference)."""
    rows = _rows()
    assert rows["callbacks"] == {"strategies"} and rows["strategies"] == set()
    assert {"root", "engine", "accelerate", "persistence", "loops", "data", "logs", "cli"} <= set(rows)


def _layout_doc_rooms() -> dict[str, set[str]]:
    """docs/layout.md's block: room folder -> the ``name.py`` files its paragraph names."""
    block = (ROOT / "docs" / "layout.md").read_text().split("```\n", 1)[1].split("```", 1)[0]
    rooms: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        if line[:1] not in (" ", ""):
            current = line.split()[0].rstrip("/")
            rooms.setdefault(current, set())
        if current is not None:
            rooms[current].update(re.findall(r"(?<![\w/.])([a-z_][a-z0-9_]*\.py)\b", line))  # not a/b.py
    return rooms


def test_docs_layout_names_every_module_in_its_room_and_none_that_is_not_there():
    rooms = _layout_doc_rooms()
    missing, stale = [], []
    for folder in ["trainer", "callbacks", "strategies",
                   *(f"trainer/{d.name}" for d in (ROOT / "trainer").iterdir() if (d / "__init__.py").exists())]:
        files = {f.name for f in (ROOT / folder).glob("*.py") if f.name != "__init__.py"}
        named = rooms.get(folder, set())
        missing += [f"{folder}/{f}" for f in sorted(files - named)]
        stale += [f"{folder}/{f}" for f in sorted(named - files - {"__init__.py"})]
    assert not missing, "modules docs/layout.md does not name under their room: " + ", ".join(missing)
    assert not stale, "docs/layout.md names modules its room does not hold: " + ", ".join(stale)
