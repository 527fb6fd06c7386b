"""The trainer's step (engine.forward_backward) and the plain step compute the same thing; the bench
times the trainer's step; the bench command runs."""

import json

import pytest
import torch
from conftest import TINY, tiny_run_config

from hybrid_distill.bench import phases
from hybrid_distill.bench.command import main as bench_main
from hybrid_distill.bench.command import variants
from hybrid_distill.bench.phases import Bench, NullClock, Switches
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


def make_bench(**extra) -> Bench:
    cfg = from_dict(tiny_run_config("/unused", "/unused", **extra))
    torch.manual_seed(0)
    student, teachers, _ = build_models(cfg)
    run = RunContext(torch.device("cpu"), None, {n: t.weight for n, t in cfg.teachers.items()}, cfg.loss.beta, 3.0)
    return Bench(student, teachers, cfg.optim, run)


def detached(parts: dict, student) -> tuple[dict, dict]:
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in parts.items()}, grads


def trainer_step(bench: Bench, images):
    """The trainer's own forward and backward (engine.train_step runs it on each micro-batch)."""
    torch.manual_seed(1)  # the same drop path draws for both steps
    parts = forward_backward(bench.student, bench.teachers, to_unit(images), bench.run)
    return detached(parts, bench.student)


def plain_step(bench: Bench, images):
    torch.manual_seed(1)
    return detached(
        plain_forward_backward(bench.student, bench.teachers, images, bench.run, NullClock()), bench.student
    )


def losses_and_grads(bench: Bench, sw, images):
    torch.manual_seed(1)
    return detached(bench.forward_backward(sw, images, NullClock()), bench.student_for(sw) if sw else bench.student)


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
def test_the_trainers_step_and_the_plain_step_give_the_same_losses_and_gradients(extra):
    extra = dict(extra)
    if extra.pop("model_kwargs_reg", None):  # register tokens in every model: P = 3 prefix tokens
        kw = {**TINY, "reg_tokens": 2, "no_embed_class": True}
        extra.update({"student.model_kwargs": kw, "teachers.sup.model_kwargs": kw, "teachers.mim.model_kwargs": kw})
    bench = make_bench(**extra)
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    assert_same(plain_step(bench, images), trainer_step(bench, images))


def test_the_benchs_optimised_step_is_the_trainers(monkeypatch):
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    calls = []
    monkeypatch.setattr(phases, "forward_backward", lambda *a, **k: calls.append(k) or forward_backward(*a, **k))
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    times = bench.step(Switches(), images)
    assert len(calls) == 1 and calls[0]["lap"].__self__.times  # the bench's clock, through the same function
    assert {"input", "teacher mim", "teacher sup", "student forward", "losses", "student backward", "optimiser"} == set(
        times
    )


def test_every_switch_off_gives_the_same_losses():
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    reference = losses_and_grads(bench, Switches(), images)
    for name in ("fused_attention", "uint8_input"):
        assert_same(losses_and_grads(bench, Switches().without(name), images), reference)
    assert_same(losses_and_grads(bench, Switches(explicit_student_attention=True), images), reference)


def test_bf16_teachers_stay_close_and_targets_are_fp32():
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    reference, _ = losses_and_grads(bench, Switches(), images)
    parts, grads = losses_and_grads(bench, Switches(bf16_teachers=True), images)
    assert torch.allclose(parts["loss"], reference["loss"], rtol=0.05)
    targets = bench.teacher_set(Switches(bf16_teachers=True))(torch.rand(2, 3, 28, 28))
    assert targets.features["sup"].dtype == torch.float32 and not targets.features["sup"].requires_grad
    assert next(bench.teachers.teachers["sup"].model.parameters()).dtype == torch.float32  # master copy intact


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
        "- fused_attention",
    ):
        assert word in text, word
    result = json.loads(out.read_text())
    assert result["provenance"]["packages"]["torch"]
    assert result["steps"]["plain"]["gflop_per_image"] > result["steps"]["optimised"]["gflop_per_image"] > 0
    assert result["ratio"] > 0 and len(result["steps"]["plain"]["step_s"]) == 2


def test_compiled_bench_ablates_the_other_switches_from_the_eager_step():
    sw = Switches(bf16_teachers=True, bf16_student=True, compile_student=True, compile_teachers=True)
    runs = variants(sw, torch.device("cuda"), ablation=True)
    assert runs["optimised"] == sw and runs["plain"] is None
    assert runs["- compile_teachers"] == Switches(bf16_teachers=True, bf16_student=True, compile_student=True)
    eager = runs["optimised eager"]
    assert not eager.compile_student and not eager.compile_teachers and eager.bf16_teachers
    assert runs["- fused_attention (eager)"] == eager.without("fused_attention")
    assert runs["optimised fp32 (eager)"] == Switches()
    compiled = [n for n, v in runs.items() if v is not None and (v.compile_student or v.compile_teachers)]
    assert sorted(compiled) == ["- compile_student", "- compile_teachers", "optimised"]  # no graph but these
    assert set(variants(sw, torch.device("cuda"), ablation=False)) == {"plain", "optimised", "optimised fp32 (eager)"}


@pytest.mark.slow  # torch.compile of both teachers (as test_train.py's compiled run)
def test_compiled_teachers_give_the_eager_targets():
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    images = torch.rand(2, 3, 28, 28)
    eager, compiled = bench.teacher_set(Switches())(images), bench.teacher_set(Switches(compile_teachers=True))(images)
    assert bench.teachers.teachers["mim"]._compiled_call_impl is None  # the eager set is left alone
    assert torch.equal(eager.keep, compiled.keep)
    assert torch.allclose(eager.features["sup"], compiled.features["sup"], atol=1e-5)
    for block, rel in eager.relations["mim"].items():
        assert torch.allclose(rel, compiled.relations["mim"][block], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh)")
def test_plain_and_optimised_steps_agree_on_cuda():
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolution for the patch embedding
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    bench.student.cuda()
    bench.teachers.cuda()
    bench.run.device = torch.device("cuda")
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    plain = plain_step(bench, images.cuda())
    assert_same(plain, trainer_step(bench, images.cuda()), rtol=1e-4, grad_rtol=1e-3)
    parts, _ = losses_and_grads(bench, Switches(bf16_teachers=True, bf16_student=True), images)
    assert torch.isfinite(parts["loss"]) and torch.allclose(parts["loss"], plain[0]["loss"], rtol=0.1)
    for t in bench.teachers.teachers.values():
        assert next(t.model.parameters()).dtype == torch.float32


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
