"""MkDocs hooks: the API reference's source tree and the benchmark charts.

The charts: the performance guide shows ``benchmarks/results/*.png`` where ``make bench`` writes them;
``on_files`` adds them to the site under the same path, so there is no second copy to go stale.

The reference pages: a line ``<!-- api: trainer.callbacks -->`` becomes one ``::: trainer.callbacks.<Name>``
block per name in that module's ``__all__`` (read from the source with ``ast``, classes first), so a
name added to ``__all__`` is documented without editing the page, and its docstring is what shows.

The API reference's source: let mkdocstrings read ``trainer.callbacks`` and ``trainer.strategies`` from source.

The wheel installs the repository's top-level ``callbacks/`` and ``strategies/`` folders as
``trainer.callbacks`` and ``trainer.strategies`` (``package-dir`` in pyproject.toml), a mapping
griffe's static loader cannot follow. Before each build this hook lays out the installed shape as
symbolic links under ``build/api-source/`` (git-ignored): ``trainer/`` holds links to every entry of
the repository's ``trainer/`` plus ``callbacks`` and ``strategies``. mkdocs.yml points the Python
handler there, so the reference is built from the docstrings in the source, without importing it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "build" / "api-source"
MAPPED = {"callbacks": ROOT / "callbacks", "strategies": ROOT / "strategies"}


def stage_package() -> Path:
    """Rebuild ``build/api-source/trainer`` as links into the repository; return its parent."""
    package = STAGE / "trainer"
    if STAGE.exists():
        shutil.rmtree(STAGE)
    package.mkdir(parents=True)
    for entry in sorted((ROOT / "trainer").iterdir()):
        if entry.name != "__pycache__":
            os.symlink(entry, package / entry.name)
    for name, source in MAPPED.items():
        os.symlink(source, package / name)
    return STAGE


def on_startup(command: str, dirty: bool) -> None:  # noqa: ARG001 - MkDocs' hook signature
    stage_package()


def on_pre_build(config) -> None:  # noqa: ARG001 - MkDocs' hook signature
    stage_package()


def on_files(files, config):
    """Publish the benchmark charts at ``benchmarks/results/<name>.png`` in the site."""
    from mkdocs.structure.files import File

    for chart in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File(str(chart.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


API_MARKER = re.compile(r"^<!-- api: ([\w.]+) -->$", flags=re.M)


def public_names(module: str) -> list[str]:
    """``module.__all__`` read from the staged source without importing it: classes, then functions."""
    base = STAGE / module.replace(".", "/")
    source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = [n for n in ast.literal_eval(node.value) if not n.startswith("_")]
            return sorted(names, key=lambda n: (not n[0].isupper(), n.lower()))
    raise ValueError(f"{source}: no __all__ to document")


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs' hook signature
    return API_MARKER.sub(lambda m: "\n\n".join(f"::: {m.group(1)}.{name}" for name in public_names(m.group(1))),
                          markdown)
