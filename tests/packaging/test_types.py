"""The library type-checks: mypy (configured in pyproject.toml's ``[tool.mypy]``) reports no error on the
package ``trainer`` as it is installed, trainer.callbacks and trainer.strategies included.

mypy cannot be pointed at the repository's folders directly: callbacks/ and strategies/ become
trainer.callbacks and trainer.strategies only through setuptools' package-dir mapping, which an editable
install implements with an import hook that mypy does not run. So the check lays the package out as it is
installed -- a folder ``trainer/`` of links to the files of trainer/, plus links named callbacks and
strategies to the top-level folders -- and runs ``mypy -p trainer`` there, with a fresh cache (a clean
clone has none). Errors are printed with the repository's paths.

By hand: ``.venv/bin/python tests/packaging/test_types.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# pyproject.toml [tool.setuptools] package-dir (checked against the file below when tomllib exists).
PACKAGE_DIR = {"trainer.callbacks": "callbacks", "trainer.strategies": "strategies"}
MYPY_TIMEOUT_S = 540

pytestmark = pytest.mark.timeout(MYPY_TIMEOUT_S + 60)


def lay_out_installed(dest: Path) -> Path:
    """Links under ``dest`` that form the package ``trainer`` as installed; returns ``dest``."""
    package = dest / "trainer"
    package.mkdir(parents=True)
    mapped = {name.split(".", 1)[1] for name in PACKAGE_DIR}
    for entry in sorted((ROOT / "trainer").iterdir()):
        if entry.name == "__pycache__" or entry.name in mapped:
            continue
        (package / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_DIR.items():
        (dest.joinpath(*name.split("."))).symlink_to(ROOT / folder, target_is_directory=True)
    return dest


def _repository_paths(output: str) -> str:
    """mypy's report with paths as they are in the repository (trainer/callbacks/x.py -> callbacks/x.py)."""
    for name, folder in PACKAGE_DIR.items():
        installed = name.replace(".", "/") + "/"
        output = re.sub(rf"(?m)^{re.escape(installed)}", folder + "/", output)
    return output


def run_mypy(workdir: Path) -> subprocess.CompletedProcess[str]:
    tree = workdir / "tree"
    if not tree.exists():
        lay_out_installed(tree)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(workdir / "cache"), "--no-color-output", "--no-pretty", "-p", "trainer"]
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "MYPY_CACHE_DIR")}
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=MYPY_TIMEOUT_S)
    result.stdout = _repository_paths(result.stdout)
    return result


def test_package_dir_matches_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == PACKAGE_DIR, (
        f"pyproject.toml maps {setuptools['package-dir']}, this test lays out {PACKAGE_DIR}: update PACKAGE_DIR")


def test_library_type_checks(tmp_path: Path) -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: it is in the dev extra, `pip install -e '.[dev]'`")
    result = run_mypy(tmp_path)
    assert result.returncode == 0, (
        f"mypy found type errors in the library (exit {result.returncode}); "
        f"fix them or, where the type is truly dynamic, narrow or cast it:\n{result.stdout}{result.stderr}")
    assert "Success: no issues found" in result.stdout, result.stdout + result.stderr

    # the check can fail: a module with a type error, added to the laid-out package only (not the
    # repository), is reported with its line (the warm cache makes this second run take seconds)
    (tmp_path / "tree" / "trainer" / "_type_error_probe.py").write_text('count: int = "three"\n')
    probe = run_mypy(tmp_path)
    assert probe.returncode == 1, probe.stdout + probe.stderr
    assert 'trainer/_type_error_probe.py:1: error: Incompatible types in assignment (expression has type "str", ' \
           'variable has type "int")  [assignment]' in probe.stdout, probe.stdout + probe.stderr


def test_errors_are_reported_with_the_repository_paths() -> None:
    output = ("trainer/callbacks/progress.py:3: error: x\ntrainer/strategies/ddp.py:4: error: y\n"
              "trainer/loops/fit_loop.py:5: error: z\nFound 3 errors in 3 files\n")
    assert _repository_paths(output) == ("callbacks/progress.py:3: error: x\nstrategies/ddp.py:4: error: y\n"
                                         "trainer/loops/fit_loop.py:5: error: z\nFound 3 errors in 3 files\n")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        outcome = run_mypy(Path(scratch))
    print(outcome.stdout + outcome.stderr, end="")
    sys.exit(outcome.returncode)
