"""The plain step (bench/plain.py) is the tests' oracle: the trainer's step (engine.forward_backward)
gives its losses and gradients. The bench times the trainer's own step (engine.train_step), reads its
phases from the step's profiler ranges, and runs its ablations as config overrides; the command runs."""

import json
import time

import pytest
import torch
from conftest import TINY, tiny_run_config

from hybrid_distill.bench import harness
from hybrid_distill.bench.command import main as bench_main
from hybrid_distill.bench.command import variants
from hybrid_distill.bench.phases import Bench, Switches
from hybrid_distill.bench.plain import plain_forward_backward
from hybrid_distill.build import build_models
from hybrid_distill.config import from_dict
from hybrid_distill.data.transforms import to_unit
from hybrid_distill.engine import forward_backward
from hybrid_distill.runtime import RunContext

# selections after blocks 0 and 1 of 6: the MIM teacher stops before block 4, whose q and k it reads
TRIMMED = {"masking.blocks": [0, 1]}
# an Eva-family MIM teacher: rotary embeddings and 4 registers (P = 5)
DINOV3_MIM = {
    "arch": "vit_small_patch16_dinov3",
    "weights": "random",
    "model_kwargs": dict(TINY),
    "relation_blocks": [-3, -2],
}


def tiny_config(**extra):
    return from_dict(tiny_run_config("/unused", "/unused", **extra))


def make_models(student_fused_attention: bool = True, **extra):
    """Student, teachers and run context of the tiny config, seeded."""
    cfg = tiny_config(**extra)
    torch.manual_seed(0)
    student, teachers, _ = build_models(cfg, student_fused_attention)
    run = RunContext(torch.device("cpu"), None, {n: t.weight for n, t in cfg.teachers.items()}, cfg.loss.beta, 3.0)
    return student, teachers, run


def detached(parts: dict, student) -> tuple[dict, dict]:
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in parts.items()}, grads


def trainer_step(models, images):
    """The trainer's own forward and backward (engine.train_step runs it on each micro-batch)."""
    student, teachers, run = models
    torch.manual_seed(1)  # the same drop path draws for both steps
    return detached(forward_backward(student, teachers, to_unit(images), run), student)


def oracle_step(models, images):
    """The oracle: plain.py's step on the same models."""
    student, teachers, run = models
    torch.manual_seed(1)
    return detached(plain_forward_backward(student, teachers, images, run), student)


def assert_same(a, b, rtol=1e-5, grad_rtol=1e-4):
    (parts_a, grads_a), (parts_b, grads_b) = a, b
    assert parts_a.keys() == parts_b.keys() and len(parts_a) >= 3
    for name in parts_a:
        assert torch.allclose(parts_a[name], parts_b[name], rtol=rtol, atol=1e-6), name
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], rtol=grad_rtol, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in grads_b.values())


@pytest.mark.parametrize(
    "extra",
    [
        TRIMMED,
        {
            **TRIMMED,
            "teachers.mim.relation_kind": "softmax",
            "teachers.sup.relation_blocks": [-1],
            "student.drop_path": 0.0,
        },
        {"masking.strategy": "last", "model_kwargs_reg": 2},
        {"masking.strategy": "random"},
        {**TRIMMED, "teachers.mim": DINOV3_MIM},
    ],
)
def test_the_trainers_step_gives_the_oracles_losses_and_gradients(extra):
    extra = dict(extra)
    if extra.pop("model_kwargs_reg", None):  # register tokens in every model: P = 3 prefix tokens
        kw = {**TINY, "reg_tokens": 2, "no_embed_class": True}
        extra.update({"student.model_kwargs": kw, "teachers.sup.model_kwargs": kw, "teachers.mim.model_kwargs": kw})
    models = make_models(**extra)
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    assert_same(oracle_step(models, images), trainer_step(models, images))


def test_both_attention_paths_of_the_student_give_the_same_step():
    """SDPA (CUDA) and the explicit path (the CPU's choice, student_fused_attention) are the same maths."""
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    fused = trainer_step(make_models(True, **TRIMMED, **{"student.drop_path": 0.0}), images)
    explicit = trainer_step(make_models(False, **TRIMMED, **{"student.drop_path": 0.0}), images)
    assert_same(fused, explicit)


PHASES = {"input", "teacher mim", "teacher sup", "student forward", "losses", "student backward", "optimiser"}


def test_the_benchs_optimised_step_is_the_trainers_and_its_phases_are_the_steps_ranges(monkeypatch):
    bench = Bench(tiny_config(**TRIMMED), torch.device("cpu"))
    calls = []
    step = harness.train_step
    monkeypatch.setattr(harness, "train_step", lambda *a, **k: calls.append(a) or step(*a, **k))
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    times = bench.step(Switches(), images)
    assert len(calls) == 1 and calls[0][2][0] is images and set(times) == {"step"} and times["step"] > 0
    start = time.perf_counter()
    phases = bench.phases(Switches(), images)
    outside = time.perf_counter() - start
    assert set(phases) == PHASES and len(calls) == 2
    assert all(t > 0 for t in phases.values()) and sum(phases.values()) < outside  # disjoint ranges, in seconds
    assert set(bench.phases(None, images)) == PHASES and len(calls) == 2  # the plain step opens the same ranges


def test_switches_are_config_overrides_and_bf16_teachers_stay_close_with_fp32_targets():
    assert Switches(bf16_teachers=True).overrides() == [
        "train.teacher_precision=bf16",
        "train.amp=none",
        "train.compile=false",
    ]
    bench = Bench(tiny_config(**TRIMMED, **{"student.drop_path": 0.0}), torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    fp32, bf16 = bench.rig(Switches()), bench.rig(Switches(bf16_teachers=True))
    assert bf16.precision.value == "bf16" and fp32.precision.value == "fp32" and bf16.run.amp_dtype is None
    # built from the same seed: the same weights, one rounded to bf16
    for a, b in zip(fp32.teachers.parameters(), bf16.teachers.parameters()):
        assert torch.equal(a.to(torch.bfloat16), b)
    reference, parts = fp32.step(images)["loss"], bf16.step(images)["loss"]
    assert torch.allclose(parts, reference, rtol=0.05) and not torch.equal(parts, reference)
    targets = bf16.teachers(torch.rand(2, 3, 28, 28))
    assert targets.features["sup"].dtype == torch.float32 and not targets.features["sup"].requires_grad


def test_bench_command_prints_both_steps_every_phase_and_the_ratio(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_run_config("/unused", tmp_path, **TRIMMED)))
    out = tmp_path / "bench.json"
    assert (
        bench_main(
            [
                str(cfg),
                "--batch",
                "4",
                "--steps",
                "2",
                "--warmup",
                "0",
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--out",
                str(out),
                "optim.weight_decay=0.01",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for word in (
        "plain",
        "optimised",
        "teacher mim",
        "teacher sup",
        "student forward",
        "student backward",
        "losses",
        "optimiser",
        "ratio",
        "GFLOP",
        "optimised fp32",
    ):
        assert word in text, word
    ablations = [line.split() for line in text.splitlines() if "speeds the optimised step up" in line]
    assert sorted(words[0] for words in ablations) == ["bf16_student", "bf16_teachers"]
    result = json.loads(out.read_text())
    assert result["config"]["optim"]["weight_decay"] == 0.01
    assert set(result["steps"]["optimised"]["phases_s"]) == {"data"} | PHASES
    assert result["provenance"]["packages"]["torch"]
    assert result["steps"]["plain"]["gflop_per_image"] > result["steps"]["optimised"]["gflop_per_image"] > 0
    assert result["ratio"] > 0 and len(result["steps"]["plain"]["step_s"]) == 2


def test_compiled_bench_ablates_the_other_switches_from_the_eager_step():
    sw = Switches(bf16_teachers=True, bf16_student=True, compile=True)
    runs = variants(sw, ablation=True)
    eager = Switches(bf16_teachers=True, bf16_student=True)
    assert runs == {
        "plain": None,
        "optimised": sw,
        "optimised eager": eager,
        "- bf16_teachers (eager)": Switches(bf16_student=True),
        "- bf16_student (eager)": Switches(bf16_teachers=True),
        "optimised fp32 (eager)": Switches(),
    }
    assert variants(Switches(), ablation=True) == {"plain": None, "optimised": Switches()}


@pytest.mark.slow  # torch.compile of both teachers (as test_train.py's compiled run)
def test_compiled_teachers_give_the_eager_targets():
    bench = Bench(tiny_config(**TRIMMED, **{"student.drop_path": 0.0}), torch.device("cpu"))
    images = torch.rand(2, 3, 28, 28)
    eager_set, compiled_set = bench.rig(Switches()).teachers, bench.rig(Switches(compile=True)).teachers
    eager, compiled = eager_set(images), compiled_set(images)
    assert eager_set.teachers["mim"]._compiled_call_impl is None  # the eager set is left alone
    assert compiled_set.teachers["mim"]._compiled_call_impl is not None
    assert torch.equal(eager.keep, compiled.keep)
    assert torch.allclose(eager.features["sup"], compiled.features["sup"], atol=1e-5)
    for block, rel in eager.relations["mim"].items():
        assert torch.allclose(rel, compiled.relations["mim"][block], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh)")
def test_the_trainers_step_gives_the_oracles_on_cuda_and_bf16_stays_close():
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolution for the patch embedding
    student, teachers, run = make_models(**TRIMMED, **{"student.drop_path": 0.0})
    run.device = torch.device("cuda")
    models = (student.cuda(), teachers.cuda(), run)
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8).cuda()
    oracle = oracle_step(models, images)
    assert_same(oracle, trainer_step(models, images), rtol=1e-4, grad_rtol=1e-3)
    bench = Bench(tiny_config(**TRIMMED, **{"student.drop_path": 0.0}), torch.device("cuda"))
    fp32 = bench.rig(Switches()).step(images)["loss"]
    bf16 = bench.rig(Switches(bf16_teachers=True, bf16_student=True)).step(images)["loss"]
    assert torch.isfinite(bf16) and torch.allclose(bf16, fp32, rtol=0.1)
    phases = bench.phases(Switches(bf16_teachers=True, bf16_student=True), images)
    assert set(phases) == PHASES and all(t > 0 for t in phases.values())  # the kernels' device time


def test_bench_reads_the_real_loader_with_data(idx_folder, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(idx_folder, tmp_path)))
    assert (
        bench_main(
            [
                str(cfg),
                "--data",
                "--batch",
                "4",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--no-ablation",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    assert set(json.loads((tmp_path / "b.json").read_text())["steps"]) == {"plain", "optimised"}
