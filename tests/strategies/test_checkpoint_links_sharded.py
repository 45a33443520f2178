"""Symbolic links in sharded checkpoints, through the real loaders on 2 processes (gloo).

A 2-process DeepSpeed ZeRO-2 run and a 2-process FSDP2 run write real checkpoints. Copies of them get
a linked folder or a linked file that leads out of the checkpoint, with a payload (a pickled
``os.system`` call that creates a marker file) planted where the link leads and ``meta.ckpt``'s sizes
and CRC-32s rewritten to match, as someone who can write the directory would. The resume (2
processes, ``ckpt_path="last"``), ``full_weights`` and ``trainer merge-weights`` must refuse each one
naming the link and where it points, and the marker never appears. A link that stays inside the
checkpoint, and a checkpoint directory named through a link, still resume.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers.distributed import run_distributed
from tests.strategies.test_checkpoint_safety import _plant_distcp, _plant_torch, _resume_worker, _save_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]


def _rewrite_manifest(ckpt):
    """Record the files' sizes and CRC-32s as they are now, as an attacker can (meta.ckpt is not signed)."""
    from trainer.strategies.checkpoint_verify import file_manifest

    meta = torch.load(os.path.join(ckpt, "meta.ckpt"), weights_only=True)
    meta["files"] = file_manifest(ckpt, skip=["meta.ckpt"])
    torch.save(meta, os.path.join(ckpt, "meta.ckpt"))


def _copy(run, tmp_path, case):
    dirpath = tmp_path / "cases" / case
    shutil.copytree(run, dirpath, symlinks=True)
    return dirpath, dirpath / "last.ckpt"


def _link_out(inside, outside):
    os.makedirs(os.path.dirname(outside), exist_ok=True)
    os.replace(inside, outside)
    os.symlink(outside, inside, target_is_directory=os.path.isdir(outside))


def _deepspeed_cases(run, tmp_path):
    marker = str(tmp_path / "pwned")
    cases = {}
    dirpath, ckpt = _copy(run, tmp_path, "engine-folder")  # the probe: engine/ is a link to a folder elsewhere
    _plant_torch(str(ckpt / "engine" / "mp_rank_00_model_states.pt"), marker)
    _link_out(ckpt / "engine", tmp_path / "elsewhere" / "engine")
    _rewrite_manifest(ckpt)
    cases["engine-folder"] = (dirpath, str(ckpt / "engine"), str(tmp_path / "elsewhere" / "engine"))
    dirpath, ckpt = _copy(run, tmp_path, "engine-file")
    name = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    _plant_torch(str(ckpt / "engine" / name), marker)
    _link_out(ckpt / "engine" / name, tmp_path / "elsewhere" / name)
    _rewrite_manifest(ckpt)
    cases["engine-file"] = (dirpath, str(ckpt / "engine" / name), str(tmp_path / "elsewhere" / name))
    dirpath, ckpt = _copy(run, tmp_path, "inside")  # a link that stays inside: followed, and it resumes
    os.replace(ckpt / "engine", ckpt / "engine.files")
    os.symlink("engine.files", ckpt / "engine", target_is_directory=True)
    cases["inside"] = (dirpath, None, None)
    return cases


def _fsdp_cases(run, tmp_path):
    marker = str(tmp_path / "pwned")
    cases = {}
    dirpath, ckpt = _copy(run, tmp_path, "distcp-file")
    _plant_distcp(str(ckpt / "__1_0.distcp"), marker)
    _link_out(ckpt / "__1_0.distcp", tmp_path / "elsewhere" / "__1_0.distcp")
    _rewrite_manifest(ckpt)
    cases["distcp-file"] = (dirpath, str(ckpt / "__1_0.distcp"), str(tmp_path / "elsewhere" / "__1_0.distcp"))
    dirpath, ckpt = _copy(run, tmp_path, "folder")
    os.makedirs(tmp_path / "elsewhere" / "extra")
    torch.save({"payload": None}, tmp_path / "elsewhere" / "extra" / "x.pt")
    os.symlink(tmp_path / "elsewhere" / "extra", ckpt / "extra", target_is_directory=True)
    cases["folder"] = (dirpath, str(ckpt / "extra"), str(tmp_path / "elsewhere" / "extra"))
    dirpath = tmp_path / "cases" / "named-through-a-link"  # the user names a checkpoint folder kept elsewhere
    os.makedirs(dirpath)
    shutil.copytree(run / "last.ckpt", tmp_path / "kept" / "last.ckpt")
    os.symlink(tmp_path / "kept" / "last.ckpt", dirpath / "last.ckpt", target_is_directory=True)
    cases["named-through-a-link"] = (dirpath, None, None)
    return cases


def _check(outcome, cases, steps):
    for case, (dirpath, link, target) in cases.items():
        for rank in (0, 1):  # both ranks refuse, with the same reason
            name, detail = outcome[rank][str(dirpath)]
            if link is None:
                assert (name, detail) == ("resumed", steps), (case, detail)
                continue
            assert name == "LinkOutsideCheckpointError", (case, detail)
            assert f"{link!r} inside it is a symbolic link to {target!r}" in detail, (case, detail)
            assert "Copy the files in" in detail


@pytest.mark.parametrize("kind", ["deepspeed", "fsdp"])
def test_a_link_out_of_a_sharded_checkpoint_is_refused_by_the_real_loaders_and_merge_weights(tmp_path, kind):
    from trainer.persistence.weights import full_weights
    from trainer.strategies.checkpoint_links import LinkOutsideCheckpointError

    if kind == "deepspeed":
        pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    run_distributed(_save_worker, timeout=300, kind=kind, dirpath=str(run))
    cases = (_deepspeed_cases if kind == "deepspeed" else _fsdp_cases)(run, tmp_path)
    outcome = run_distributed(_resume_worker, timeout=300, kind=kind,
                              dirpaths=[str(dirpath) for dirpath, _, _ in cases.values()])
    _check(outcome, cases, steps=16)
    for case, (dirpath, link, target) in cases.items():
        if link is not None:
            with pytest.raises(LinkOutsideCheckpointError, match="symbolic link"):
                full_weights(str(dirpath / "last.ckpt"))
    first = next(iter(cases.values()))[0]  # the probe's own command: merge-weights on the linked folder
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "merge-weights", str(first / "last.ckpt"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=200)
    assert result.returncode == 2 and "is a symbolic link to" in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / "out")
    assert not os.path.exists(tmp_path / "pwned")  # no payload ever ran
