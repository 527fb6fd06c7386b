"""Every result names the machine that produced it: the CPU model too (bf16 speed differs several-fold
between CPU models), not the empty platform.processor() of Linux."""
from pathlib import Path

import pytest

from hybrid_distill.provenance import cpu_model, provenance


def test_provenance_names_the_cpu_model_from_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")]
    if not names:
        pytest.skip("/proc/cpuinfo names no model on this architecture")
    assert cpu_model() == names[0]
    assert provenance()["cpu"] == names[0]
