"""Every Python block of README.md and docs/ runs as written.

A page's ```python blocks run in order, in one namespace (a reader goes down the page), in a fresh
working directory; the namespace starts with the fill-ins of ``snippet_fixtures`` (a model, loaders,
an optimizer), the things a reader has in their own project. Blocks in other languages (shell
commands, output, layouts) are not run.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import pytest

from tests.docs.snippet_fixtures import fill_ins

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", flags=re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block, dedented (blocks may sit inside list items)."""
    return [(text.count("\n", 0, m.start()) + 2, textwrap.dedent(m.group("code"))) for m in FENCE.finditer(text)]


def test_blocks_are_found_inside_lists_and_at_the_margin():
    text = "intro\n\n```python\nx = 1\n```\n\n- item:\n\n  ```python\n  y = x + 1\n  ```\n\n```\nshell\n```\n"
    assert python_blocks(text) == [(4, "x = 1\n"), (10, "y = x + 1\n")]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files a block writes (runs/, checkpoints, final/) land here
    monkeypatch.setenv("WANDB_MODE", "offline")
    logging.getLogger("trainer").setLevel(logging.WARNING)  # the status lines are not under test here
    namespace = fill_ins()
    try:
        for line, code in python_blocks(page.read_text()):
            try:
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page.relative_to(ROOT)}, the block at line {line} fails: "
                                     f"{type(error).__name__}: {error}") from error
    finally:
        logging.getLogger("trainer").setLevel(logging.NOTSET)
