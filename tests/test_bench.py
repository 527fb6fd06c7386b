"""The plain and optimised steps compute the same thing (issue 7, item 2); the bench command runs."""
import json

import pytest
import torch

from hybrid_distill.bench.command import main as bench_main, variants
from hybrid_distill.bench.phases import Bench, NullClock, Switches
from hybrid_distill.build import build_models
from hybrid_distill.config import from_dict
from hybrid_distill.trainer import RunContext

from conftest import TINY, tiny_run_config

# selections after blocks 0 and 1 of 6: the MIM teacher's block 3 runs on kept rows, block 4 not at all
TRIMMED = {"masking.blocks": [0, 1]}


def make_bench(**extra) -> Bench:
    cfg = from_dict(tiny_run_config("/unused", "/unused", **extra))
    torch.manual_seed(0)
    student, teachers, _ = build_models(cfg)
    run = RunContext(torch.device("cpu"), None, {n: t.weight for n, t in cfg.teachers.items()}, cfg.loss.beta, 3.0)
    return Bench(student, teachers, cfg.optim, run)


def losses_and_grads(bench: Bench, sw, images):
    torch.manual_seed(1)  # the same drop path draws for both steps
    parts = bench.forward_backward(sw, images, NullClock())
    grads = {n: p.grad.clone() for n, p in bench.student.named_parameters()}
    bench.student.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in parts.items()}, grads


@pytest.mark.parametrize("extra", [TRIMMED, {**TRIMMED, "teachers.mim.relation_kind": "softmax",
                                             "teachers.sup.relation_blocks": [-1], "student.drop_path": 0.0},
                                   {"masking.strategy": "last", "model_kwargs_reg": 2}])
def test_plain_and_optimised_steps_give_the_same_losses_and_gradients(extra):
    extra = dict(extra)
    if extra.pop("model_kwargs_reg", None):  # register tokens in every model: P = 3 prefix tokens
        kw = {**TINY, "reg_tokens": 2, "no_embed_class": True}
        extra.update({"student.model_kwargs": kw, "teachers.sup.model_kwargs": kw, "teachers.mim.model_kwargs": kw})
    bench = make_bench(**extra)
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    plain, plain_grads = losses_and_grads(bench, None, images)
    fast, fast_grads = losses_and_grads(bench, Switches(), images)
    assert plain.keys() == fast.keys() and len(plain) >= 3
    for name in plain:
        assert torch.allclose(plain[name], fast[name], rtol=1e-5, atol=1e-6), (name, plain[name], fast[name])
    for name, g in plain_grads.items():
        assert torch.allclose(g, fast_grads[name], rtol=1e-4, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in fast_grads.values())


def test_every_switch_off_gives_the_same_losses():
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    reference, _ = losses_and_grads(bench, Switches(), images)
    for name in ("fused_attention", "trim_teachers", "kept_relations", "uint8_input"):
        parts, _ = losses_and_grads(bench, Switches().without(name), images)
        assert torch.allclose(parts["loss"], reference["loss"], rtol=1e-5), name


def test_bf16_teachers_stay_close_and_targets_are_fp32():
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    reference, _ = losses_and_grads(bench, Switches(), images)
    parts, grads = losses_and_grads(bench, Switches(bf16_teachers=True), images)
    assert torch.allclose(parts["loss"], reference["loss"], rtol=0.05)
    targets = bench.teacher_set(True)(torch.rand(2, 3, 28, 28))
    assert targets["sup"].features.dtype == torch.float32 and not targets["sup"].features.is_inference()
    assert next(bench.teachers.teachers["sup"].model.parameters()).dtype == torch.float32  # master copy intact


def test_bench_command_prints_both_steps_every_phase_and_the_ratio(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(tiny_run_config("/unused", tmp_path, **TRIMMED)))
    out = tmp_path / "bench.json"
    assert bench_main([str(cfg), "--batch", "4", "--steps", "2", "--warmup", "0", "--device", "cpu",
                       "--out", str(out), "optim.weight_decay=0.01"]) == 0
    text = capsys.readouterr().out
    for word in ("plain", "optimised", "teacher mim", "teacher sup", "student forward", "student backward",
                 "losses", "optimiser", "ratio", "GFLOP", "- fused_attention"):
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


def test_compiled_teachers_give_the_eager_targets():
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    images = torch.rand(2, 3, 28, 28)
    eager, compiled = bench.teacher_set(False)(images), bench.teacher_set(False, compiled=True)(images)
    assert bench.teachers.teachers["mim"]._compiled_call_impl is None  # the eager set is left alone
    for name, out in eager.items():
        assert torch.equal(out.keep, compiled[name].keep)
        if out.features is not None:
            assert torch.allclose(out.features, compiled[name].features, atol=1e-5)
        for spec, rel in out.relations.items():
            assert torch.allclose(rel, compiled[name].relations[spec], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh)")
def test_plain_and_optimised_steps_agree_on_cuda():
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolution for the patch embedding
    bench = make_bench(**TRIMMED, **{"student.drop_path": 0.0})
    bench.student.cuda()
    bench.teachers.cuda()
    bench.run.device = torch.device("cuda")
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    plain, plain_grads = losses_and_grads(bench, None, images)
    fast, fast_grads = losses_and_grads(bench, Switches(fused_adamw=True), images)
    for name in plain:
        assert torch.allclose(plain[name], fast[name], rtol=1e-4, atol=1e-6), name
    for name, g in plain_grads.items():
        assert torch.allclose(g, fast_grads[name], rtol=1e-3, atol=1e-5), name
    parts, _ = losses_and_grads(bench, Switches(bf16_teachers=True, bf16_student=True), images)
    assert torch.isfinite(parts["loss"]) and torch.allclose(parts["loss"], plain["loss"], rtol=0.1)
    for t in bench.teachers.teachers.values():
        assert next(t.model.parameters()).dtype == torch.float32


def test_bench_reads_the_real_loader_with_data(idx_folder, tmp_path, capsys):
    import yaml
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(idx_folder, tmp_path)))
    assert bench_main([str(cfg), "--data", "--batch", "4", "--steps", "1", "--warmup", "0", "--no-ablation",
                       "--device", "cpu", "--out", str(tmp_path / "b.json")]) == 0
    assert set(json.loads((tmp_path / "b.json").read_text())["steps"]) == {"plain", "optimised"}
