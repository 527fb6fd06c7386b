"""Every result names the machine that produced it: the CPU model too (bf16 speed differs several-fold
between CPU models), not the empty platform.processor() of Linux."""

from pathlib import Path

import pytest

from hybrid_distill.provenance import cpu_model, provenance


def test_provenance_names_the_cpu_model_from_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    names = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    if not names:
        pytest.skip("/proc/cpuinfo names no model on this architecture")
    assert cpu_model() == names[0]
    assert provenance()["cpu"] == names[0]


def test_provenance_records_the_commit_the_process_started_from(monkeypatch):
    from hybrid_distill import provenance as prov

    started = prov.provenance()["git_sha"]
    monkeypatch.setattr(prov, "git_sha", lambda cwd=None: "changed-since")  # the checkout moves on
    assert prov.provenance()["git_sha"] == started != "changed-since"
