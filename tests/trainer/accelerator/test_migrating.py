"""docs/migrating.md stays true: every `trainer...` name in its tables exists."""

from __future__ import annotations

import importlib
import re
import pytest

from tests import ROOT

DOC = ROOT / "docs" / "migrating.md"


def _listed_names() -> list[str]:
    names = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2:
            names += re.findall(r"`(trainer(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", cells[1])
    return sorted(set(names))


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_the_guide_lists_names():
    names = _listed_names()
    assert "trainer.TrainModule" in names and "trainer.DataModule" in names and len(names) > 40


@pytest.mark.parametrize("name", _listed_names())
def test_every_listed_name_exists(name):
    _resolve(name)
