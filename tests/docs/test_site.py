"""The documentation site: `make docs` builds it strictly, and the API reference covers every public name.

The build runs MkDocs with ``--strict`` exactly as ``make docs`` does, into a temporary directory: a
broken link between pages, a page missing from the nav, an anchor that does not exist or a
``::: trainer.X`` reference that mkdocstrings cannot resolve fails it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"trainer": "trainer.md", "trainer.callbacks": "callbacks.md", "trainer.strategies": "strategies.md",
           "trainer.utils": "utils.md"}


def public_names(module_name: str) -> list[str]:
    return [n for n in importlib.import_module(module_name).__all__ if not n.startswith("_")]


@pytest.mark.slow
def test_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocstrings_handlers.python", reason="the dev extra's mkdocstrings[python] builds the site")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"make docs fails:\n{run.stdout}\n{run.stderr}"
    for page in ("index.html", "getting-started.html", "migrating.html", "guides/trainer.html",
                 "guides/troubleshooting.html", "reference/trainer.html"):
        assert (site / page).is_file(), f"{page} was not built"
    for module_name, page in MODULES.items():
        html = (site / "reference" / page.replace(".md", ".html")).read_text()
        for name in public_names(module_name):
            # mkdocstrings gives each documented object an anchor of its full path.
            assert f'id="{module_name}.{name}"' in html, f"{module_name}.{name} is not rendered in reference/{page}"


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_reference_page_documents_the_whole_module(module_name):
    """Each reference page asks the build hook for every name of its module's ``__all__``."""
    page = (ROOT / "docs" / "reference" / MODULES[module_name]).read_text()
    assert f"<!-- api: {module_name} -->" in page.splitlines(), (
        f"docs/reference/{MODULES[module_name]} lost its '<!-- api: {module_name} -->' line")


def test_build_hook_reads_all_from_source():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import api_source
    finally:
        sys.path.pop(0)
    api_source.stage_package()
    for module_name in MODULES:
        assert sorted(api_source.public_names(module_name)) == sorted(public_names(module_name))


def documented_parameters(obj) -> list[str]:
    """The parameters a caller passes: the constructor's for a class, the signature's for a function."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and target is object.__init__:
        return []
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def docstring_of(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and obj.__init__ is not object.__init__:
        doc += "\n" + (inspect.getdoc(obj.__init__) or "") if obj.__init__.__doc__ else ""
    return doc


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_every_public_name_has_a_docstring_naming_its_arguments(module_name):
    module = importlib.import_module(module_name)
    faults = []
    for name in public_names(module_name):
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or callable(obj)):
            continue
        doc = docstring_of(obj)
        if not doc.strip():
            faults.append(f"{name}: no docstring")
            continue
        missing = [p for p in documented_parameters(obj) if not re.search(rf"\b{re.escape(p)}\b", doc)]
        if missing:
            faults.append(f"{name}: the docstring does not name {', '.join(missing)}")
    assert not faults, f"{module_name}: " + "; ".join(faults)


def test_docstring_check_catches_a_missing_argument():
    def undocumented(alpha, beta=1):
        """Uses alpha."""

    assert documented_parameters(undocumented) == ["alpha", "beta"]
    assert not re.search(r"\bbeta\b", docstring_of(undocumented))
