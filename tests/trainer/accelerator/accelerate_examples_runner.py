"""Accelerate's ``examples/by_feature`` scripts run with Accelerate and with this library (the literal
import rule, ``accelerate`` -> ``trainer``), their data and model swapped for the local stand-ins of
``hf_stubs/`` (see its README). The scripts are not shipped with the accelerate package: they are read
from a checkout of Accelerate's repository named by ``ACCELERATE_EXAMPLES_DIR`` (its ``examples``
folder, or the repository's git directory)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

STUBS = str(Path(__file__).resolve().parent / "hf_stubs")

# script -> extra command-line arguments ({tmp}: a scratch directory of the run)
EXAMPLES = {
    "gradient_accumulation": ["--gradient_accumulation_steps", "2"],
    "local_sgd": ["--gradient_accumulation_steps", "1", "--local_sgd_steps", "2"],
    "multi_process_metrics": [],
    "early_stopping": [],
    "checkpointing": ["--checkpointing_steps", "epoch", "--output_dir", "{tmp}"],
    "memory": [],
    "automatic_gradient_accumulation": [],
    "tracking": [],
}


def examples_source(name: str) -> str | None:
    """The text of ``examples/by_feature/<name>.py`` from ACCELERATE_EXAMPLES_DIR, or None."""
    root = os.environ.get("ACCELERATE_EXAMPLES_DIR", "")
    if not root:
        return None
    folder = Path(root)
    for candidate in (folder / "by_feature" / f"{name}.py", folder / "examples" / "by_feature" / f"{name}.py"):
        if candidate.is_file():
            return candidate.read_text()
    if (folder / "HEAD").is_file():  # a bare git directory
        run = subprocess.run(["git", f"--git-dir={folder}", "show", f"HEAD:examples/by_feature/{name}.py"],
                             capture_output=True, text=True)
        return run.stdout if run.returncode == 0 else None
    return None


def run_example(source: str, name: str, args: list[str], library: str, tmp: str) -> list[str]:
    """Run the script's ``main()`` in this process with ``library`` ("accelerate" or "trainer");
    returns the lines it printed that report an epoch's metric."""
    from tests.trainer.accelerator.accelerate_script_runner import rewrite_imports

    if STUBS not in sys.path:
        sys.path.insert(0, STUBS)
    if library == "trainer":
        source = rewrite_imports(source)
    argv = [f"{name}.py", "--cpu", *[a.replace("{tmp}", tmp) for a in args]]
    namespace = {"__name__": f"by_feature_{name}", "__file__": f"{name}.py"}
    out = io.StringIO()
    old_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"{name}.py", "exec"), namespace)
            namespace["main"]()
    finally:
        sys.argv = old_argv
    return [line for line in out.getvalue().splitlines() if line.startswith("epoch")]
