"""Proof by install: the wheel holds one import namespace (``trainer``), and a user project with
its own ``callbacks.py`` and ``strategies/`` package imports every public name and trains, from the
wheel and from an editable install, in a working directory that is not this repository."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# The user's project: its own top-level callbacks and strategies, which must keep working.
USER_CALLBACKS = "OWN = 'the user callbacks.py'\n"
USER_STRATEGIES = "OWN = 'the user strategies package'\n"
USER_SCRIPT = textwrap.dedent("""
    import sys
    import callbacks, strategies                      # the user's own modules
    assert callbacks.OWN == "the user callbacks.py", callbacks.__file__
    assert strategies.OWN == "the user strategies package", strategies.__file__

    import torch
    import trainer
    from trainer import *                             # noqa: F403
    import trainer.callbacks as tc, trainer.strategies as ts, trainer.utils as tu
    for module in (trainer, tc, ts, tu):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)
    from trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from trainer.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy, Strategy

    class Net(trainer.TrainModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    t = trainer.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    t.fit(Net(), torch.utils.data.DataLoader(data, batch_size=4))
    assert t.global_step == 2, t.global_step
    print("TRAINER", trainer.__file__)
    print("CALLBACKS", tc.__file__)
    print("STRATEGIES", ts.__file__)
""")


def _user_project(tmp_path: Path) -> Path:
    project = tmp_path / "user_project"
    (project / "strategies").mkdir(parents=True)
    (project / "callbacks.py").write_text(USER_CALLBACKS)
    (project / "strategies" / "__init__.py").write_text(USER_STRATEGIES)
    (project / "train.py").write_text(USER_SCRIPT)
    return project


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAINER_CONFIG_FILE")}
    env.update(extra)
    return env


def _check_user_project(python: str, project: Path, env: dict[str, str], installed_root: Path) -> None:
    out = _run([python, "train.py"], project, env).stdout
    files = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ", 1)[0] in
                 ("TRAINER", "CALLBACKS", "STRATEGIES"))
    assert Path(files["TRAINER"]).is_relative_to(installed_root), files
    assert Path(files["CALLBACKS"]).is_relative_to(installed_root), files
    assert Path(files["STRATEGIES"]).is_relative_to(installed_root), files
    help_text = _run([python, "-m", "trainer", "--help"], project, env).stdout
    assert "usage: trainer" in help_text and "launch" in help_text


def test_wheel_holds_only_the_trainer_namespace_and_works_beside_a_user_project(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(ROOT)], tmp_path, _clean_env(PYTHONWARNINGS="ignore::UserWarning"))
    (wheel,) = dist.glob("trainer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"trainer"}, top
    assert "trainer/callbacks/__init__.py" in names and "trainer/callbacks/model_checkpoint.py" in names
    assert "trainer/strategies/__init__.py" in names and "trainer/strategies/ddp.py" in names
    assert "trainer/py.typed" in names and "trainer/__main__.py" in names
    assert "trainer/cli/__init__.py" in names and "trainer/cli/launch.py" in names and "trainer/cli/__main__.py" in names
    assert not any(n.startswith(("callbacks/", "strategies/", "tests/")) for n in names)
    sources = {str(f.relative_to(ROOT)).replace("callbacks/", "trainer/callbacks/", 1)
               .replace("strategies/", "trainer/strategies/", 1)
               for folder in ("trainer", "callbacks", "strategies") for f in (ROOT / folder).rglob("*.py")}
    assert sources - set(names) == set(), "modules of the source tree missing from the wheel (pyproject packages)"
    from trainer import __version__

    assert wheel.name.startswith(f"trainer-{__version__}-"), wheel.name  # the version is defined once

    target = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
         tmp_path, _clean_env())
    project = _user_project(tmp_path)
    env = _clean_env(PYTHONPATH=str(target))
    _check_user_project(sys.executable, project, env, target)
    script = target / "bin" / "trainer"
    assert script.exists(), sorted(p.name for p in (target / "bin").iterdir())
    console = _run([sys.executable, str(script), "--help"], project, env).stdout
    assert "usage: trainer" in console


def test_editable_install_maps_the_folders_into_the_trainer_namespace(tmp_path):
    # A throw-away venv that sees this interpreter's packages (torch, setuptools) through a .pth
    # line, with this repository installed into it in editable mode.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, _clean_env())
    python = str(venv / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path,
                _clean_env()).stdout.strip()
    # every site directory this interpreter sees (a venv's own, and any it reaches through .pth lines)
    ours = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_path("purelib")]
    Path(site, "_outer_site.pth").write_text("\n".join(ours) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation", "-q",
          "-e", str(ROOT)], tmp_path, _clean_env(PYTHONWARNINGS="ignore::UserWarning"))
    project = _user_project(tmp_path)
    _check_user_project(python, project, _clean_env(), ROOT)
    # no top-level callbacks/strategies came with the install: from a directory without the
    # user's files, they do not import
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = "import importlib.util as u; print(u.find_spec('callbacks'), u.find_spec('strategies'))"
    assert _run([python, "-c", probe], empty, _clean_env()).stdout.strip() == "None None"
