"""A full disk during a checkpoint, an export or the run lock: one line naming the folder and its free
space, exit code 2, no temp file and no empty lock left. ENOSPC is injected into the writer (every
torch.save / json.dump fails as on a full disk) rather than filling a real disk."""

import contextlib
import errno
import io
import json

import pytest
import torch
import yaml
from conftest import tiny_run_config

from hybrid_distill import cli
from hybrid_distill.files import DiskFull, save_checkpoint
from hybrid_distill.run_dir import LOCK, RunLock

REAL_SAVE, REAL_DUMP = torch.save, json.dump


def half_written_save(payload, f, *args, **kwargs):
    """torch.save that writes its first bytes, then meets a full disk."""
    f.write(b"PK\x03\x04 first bytes")
    raise OSError(errno.ENOSPC, "No space left on device")


def no_space_dump(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue().strip()


def leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK)


def test_a_checkpoint_on_a_full_disk_names_the_folder_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises(DiskFull, match=r"the disk of .*checkpoints is full \(\d+\.\d MiB free\)"):
        save_checkpoint(tmp_path / "checkpoints" / "checkpoint-00000001.pt", {"step": 1})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_the_lock_on_a_full_disk_is_not_left_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(json, "dump", no_space_dump)
    with pytest.raises(DiskFull, match="is full"), RunLock(tmp_path / "run"):
        pass
    assert not (tmp_path / "run" / LOCK).exists()


@pytest.fixture
def tiny_run(idx_folder, tmp_path):
    """A config of two steps and its finished run."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(idx_folder, tmp_path / "runs", **{"train.max_steps": 2})))
    assert run_cli(["train", str(config)])[0] == 0
    return config, tmp_path / "runs" / "tiny"


def test_train_and_resume_on_a_full_disk_end_in_one_line_exit_2(tiny_run, tmp_path, monkeypatch):
    config, run = tiny_run
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    monkeypatch.setattr(torch, "save", half_written_save)
    code, err = run_cli(["train", str(config), "--resume", "auto", "train.max_steps=3", "--allow-config-change"])
    assert (code, len(err.splitlines())) == (2, 1), err
    assert f"the disk of {run / 'checkpoints'} is full" in err and "MiB free" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    monkeypatch.setattr(json, "dump", no_space_dump)  # still full: the lock cannot be written either
    code, err = run_cli(["train", str(config), "--resume", "auto", "train.max_steps=3", "--allow-config-change"])
    assert (code, len(err.splitlines())) == (2, 1), err
    assert f"the disk of {run} is full" in err, err
    assert leftovers(tmp_path) == []


def test_export_on_a_full_disk_ends_in_one_line_exit_2(tiny_run, tmp_path, monkeypatch):
    _, run = tiny_run
    monkeypatch.setattr(torch, "save", half_written_save)
    code, err = run_cli(["export", str(run), "--out", str(tmp_path / "out" / "student.pth")])
    assert (code, len(err.splitlines())) == (2, 1), err
    assert f"the disk of {tmp_path / 'out'} is full" in err, err
    assert list((tmp_path / "out").iterdir()) == []


def test_export_to_a_destination_that_refuses_the_write_ends_in_one_line_exit_2(tiny_run, tmp_path, monkeypatch):
    def read_only_save(payload, f, *args, **kwargs):  # a folder that turned read-only after the checks
        raise OSError(errno.EROFS, "Read-only file system")

    _, run = tiny_run
    monkeypatch.setattr(torch, "save", read_only_save)
    out = tmp_path / "out" / "student.pth"
    code, err = run_cli(["export", str(run), "--out", str(out)])
    assert (code, err) == (2, f"hybrid-distill export: error: cannot write {out}: Read-only file system")
    assert list((tmp_path / "out").iterdir()) == []
