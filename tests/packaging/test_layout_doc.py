"""The README's Layout table against the code: every room of the source tree has a row, every row is a room,
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
