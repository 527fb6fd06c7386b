"""Every result names the machine that produced it: the CPU model too (bf16 speed differs several-fold
between CPU models), not the empty platform.processor() of Linux."""

import platform

from hybrid_distill import provenance as prov

# /proc/cpuinfo of a two-core x86 machine, abridged: "model" precedes "model name" and must not match
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse

processor\t: 1
model name\t: AMD EPYC 7B13
"""


def test_provenance_names_the_cpu_model_that_cpuinfo_states(tmp_path, monkeypatch):
    cpuinfo, real = tmp_path / "cpuinfo", prov.Path
    monkeypatch.setattr(prov, "Path", lambda path: cpuinfo if path == "/proc/cpuinfo" else real(path))
    cpuinfo.write_text(CPUINFO)
    assert prov.cpu_model() == "AMD EPYC 7B13" and prov.provenance()["cpu"] == "AMD EPYC 7B13"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # arm64 names no model: platform's words instead
    assert prov.cpu_model() == (platform.processor() or platform.machine())
    cpuinfo.unlink()  # no /proc (macOS)
    assert prov.cpu_model() == (platform.processor() or platform.machine())


def test_provenance_records_the_commit_the_process_started_from(monkeypatch):
    started = prov.provenance()["git_sha"]
    monkeypatch.setattr(prov, "git_sha", lambda cwd=None: "changed-since")  # the checkout moves on
    assert prov.provenance()["git_sha"] == started != "changed-since"
