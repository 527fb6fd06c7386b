"""Offline and piped use of the command line: fast one-line failures that say what to do."""

import os
import subprocess
import sys
import time

import pytest
from conftest import tiny_run_config
from test_offline_teachers import no_network  # noqa: F401  (fixture)

from hybrid_distill.cli import main
from hybrid_distill.weights import build_teacher_backbone


def test_offline_pretrained_teacher_fails_fast_naming_it_and_the_fixes(tmp_path, monkeypatch, no_network):  # noqa: F811
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the socket alone says the hub is unreachable
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(Exception) as err:
        build_teacher_backbone("deit_small_patch16_224.fb_in1k", pretrained=True)
    assert time.perf_counter() - start < 10  # not a minute of retries
    message = str(err.value)
    for part in ("deit_small_patch16_224.fb_in1k", "teachers prefetch", "weights: /path", "HF_HOME"):
        assert part in message


def test_offline_training_ends_in_one_line(idx_folder, tmp_path, monkeypatch, capsys, no_network):  # noqa: F811
    import yaml

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    values = tiny_run_config(idx_folder, tmp_path)
    values["teachers"]["sup"].update(weights="pretrained", arch="deit_tiny_patch16_224.fb_in1k", model_kwargs={})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teacher 'deit_tiny_patch16_224.fb_in1k'" in err


def test_prefetch_of_an_unknown_name_says_unknown(tmp_path, capsys):
    assert main(["teachers", "prefetch", "no_such_teacher", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    # the argument check names the value and says unknown; never a network problem
    assert len(err.splitlines()) == 1 and "no_such_teacher" in err and "unknown" in err
    assert "internet" not in err and "network" not in err


def test_help_says_how_to_use_a_copied_cache(capsys):
    with pytest.raises(SystemExit):
        main(["teachers", "prefetch", "--help"])
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().out


@pytest.mark.slow  # default suite: test_a_closed_stdout_ends_the_command_quietly
def test_teachers_list_into_a_closed_pipe_has_no_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid_distill.cli", "teachers", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `| head` does once it has its lines: the writes that follow get EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_closed_stdout_ends_the_command_quietly(monkeypatch, capsys):
    # the in-process half of the test above: a pipe whose reader is gone, as after `| head` exits
    read, write = os.pipe()
    os.close(read)
    stdout = open(write, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["teachers", "list", "--json"]) == 0
    finally:
        stdout.close()  # its fd now points at /dev/null: the handler's dup2
    assert capsys.readouterr().err == ""
