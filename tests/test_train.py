"""Training: exact resume, checkpoints, and bad input failing before training with one line."""

import json

import pytest
import torch
from conftest import tiny_run_config
from helpers import logged, write_yaml

from hybrid_distill import files
from hybrid_distill.build import build_models
from hybrid_distill.cli import main
from hybrid_distill.config import ConfigError, from_dict, load_config
from hybrid_distill.data.build import DataError
from hybrid_distill.trainer import Trainer


def run(idx_folder, out, max_steps, resume=None, **extra):
    cfg = from_dict(tiny_run_config(idx_folder, out, **{"train.max_steps": max_steps, **extra}))
    trainer = Trainer(cfg, resume=resume)
    trainer.fit()
    return trainer


def test_2n_steps_equal_n_steps_resume_n_steps(idx_folder, tmp_path):
    # 96 images / batch 16 = 6 steps an epoch: 8 steps cross an epoch boundary mid-way after resume
    whole = run(idx_folder, tmp_path / "a", 8)
    half = run(idx_folder, tmp_path / "b", 4)
    assert [p.name for p in files.list_checkpoints(half.run_dir)] == ["checkpoint-00000004.pt"]
    resumed = run(idx_folder, tmp_path / "b", 8, resume="auto")
    assert resumed.step == 8
    for (name, a), b in zip(whole.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    sa, sb = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.allclose(sa[k]["exp_avg"], sb[k]["exp_avg"], atol=1e-7) for k in sa)


def test_checkpoint_holds_no_teacher_weights_and_loads_weights_only(idx_folder, tmp_path):
    trainer = run(idx_folder, tmp_path, 2, **{"train.ckpt_every_steps": 1, "train.keep_checkpoints": 1})
    saved = files.list_checkpoints(trainer.run_dir)
    assert len(saved) == 1  # older ones pruned
    state = torch.load(saved[-1], weights_only=True)
    assert set(state) >= {"model", "optimizer", "scaler", "step", "rng", "config", "provenance"}
    assert state["model"].keys() == trainer.student.state_dict().keys()  # Student.state_dict() as it is
    assert {k.split(".")[0] for k in state["model"]} == {"backbone", "heads"}
    assert state["config"]["student"]["arch"] == "vit_tiny_patch16_224"
    assert json.loads((trainer.run_dir / "provenance.json").read_text())["packages"]["torch"]
    assert (trainer.run_dir / "config.yaml").is_file() and (trainer.run_dir / "metrics.jsonl").is_file()


def test_accumulation_matches_one_big_batch(idx_folder, tmp_path):
    # drop path and random crops are seeded per sample / restored, so only the micro-batch split differs
    big = run(idx_folder, tmp_path / "big", 2, **{"student.drop_path": 0.0})
    acc = run(idx_folder, tmp_path / "acc", 2, **{"student.drop_path": 0.0, "optim.accum_steps": 2})
    for a, b in zip(big.student.parameters(), acc.student.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_key_fails_with_the_valid_choices(idx_folder, tmp_path, capsys):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path))
    err = cli_error(capsys, ["train", str(path), "optim.bllr=1e-4"])
    assert "bllr" in err and "Did you mean" in err and "blr" in err
    with pytest.raises(ConfigError, match="valid keys there"):
        load_config(path, ["masking.ratio=0.5"])


def test_wrong_type_fails(idx_folder, tmp_path, capsys):
    path = write_yaml(tmp_path / "c.yaml", tiny_run_config(idx_folder, tmp_path))
    assert "could not be converted to Float" in cli_error(capsys, ["train", str(path), "optim.blr=fast"])
    assert "expected one of [progressive, last, random, none]" in cli_error(
        capsys, ["train", str(path), "masking.strategy=smart"]
    )


def test_missing_dataset_path_fails_naming_it(idx_folder, tmp_path, capsys):
    values = tiny_run_config(idx_folder, tmp_path)
    values["data"] = {"dataset": "folder", "path": str(tmp_path / "nowhere"), "img_size": 28}
    err = cli_error(capsys, ["train", str(write_yaml(tmp_path / "c.yaml", values))])
    assert "nowhere does not exist" in err and "data.path" in err
    values["data"] = {"dataset": "fashion_mnist", "path": str(tmp_path), "img_size": 28}
    assert "dataset-fashion-mnist" in cli_error(capsys, ["train", str(write_yaml(tmp_path / "c.yaml", values))])


def test_empty_dataset_fails(idx_folder, tmp_path, capsys):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    values = tiny_run_config(idx_folder, tmp_path)
    values["data"] = {"dataset": "folder", "path": str(tmp_path / "empty"), "img_size": 28}
    err = cli_error(capsys, ["train", str(write_yaml(tmp_path / "c.yaml", values))])
    assert "empty" in err or "cannot read a dataset" in err
    with pytest.raises(DataError):
        Trainer(from_dict(values))


def test_shipped_configs_build_their_models_at_tiny_size_and_train_a_step():
    from pathlib import Path

    from hybrid_distill.engine import build_optimizer, train_step
    from hybrid_distill.runtime import RunContext

    configs = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert len(configs) >= 5
    tiny = "{img_size: 32, patch_size: 8, embed_dim: 48, depth: 6, num_heads: 3}"
    for path in configs:
        names = list(load_config(path, ["data.path=/data"]).teachers)
        per_teacher = [f"teachers.{n}.{k}" for n in names for k in (f"model_kwargs={tiny}", "weights=random")]
        cfg = load_config(path, ["data.path=/data", "data.img_size=32", f"student.model_kwargs={tiny}", *per_teacher])
        torch.manual_seed(0)
        student, teachers, _ = build_models(cfg)
        ctx = RunContext(torch.device("cpu"), None, {n: t.weight for n, t in cfg.teachers.items()}, cfg.loss.beta, 3.0)
        images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        parts = train_step(
            student,
            teachers,
            [images],
            build_optimizer(student, cfg.optim),
            torch.amp.GradScaler("cpu", enabled=False),
            1e-4,
            ctx,
        )
        expected = {f"{n}/feat" for n, t in cfg.teachers.items() if t.features}
        expected |= {f"{n}/rel{b % 6}" for n, t in cfg.teachers.items() for b in t.relation_blocks}
        assert set(parts) == expected | {"loss", "grad_norm", "skipped"}, path.name
        assert torch.isfinite(parts["loss"]) and parts["loss"] > 0 and not parts["skipped"], path.name


def test_training_monitor_equals_direct_metric_calls(idx_folder, tmp_path):
    from hybrid_distill.analysis.extract import reduce_attention
    from hybrid_distill.analysis.metrics import attention_distance, attention_nmi

    trainer = run(idx_folder, tmp_path, 2, **{"train.monitor_every": 2, "train.monitor_images": 4})
    record = [r for r in logged(trainer.run_dir) if "attn/nmi/layer00" in r][-1]
    assert record["step"] == 2
    probe = trainer.monitor.probe_images
    assert probe.shape == (4, 3, 28, 28)
    direct = reduce_attention(
        trainer.student.backbone,
        probe,
        lambda _, p: (
            attention_distance(p, (7, 7), (4, 4), 1, renormalize=True).mean().item(),
            attention_nmi(p, 1).mean().item(),
        ),
    )
    for layer, (distance, nmi) in enumerate(direct):
        assert record[f"attn/distance/layer{layer:02d}"] == pytest.approx(distance, rel=1e-5)
        assert record[f"attn/nmi/layer{layer:02d}"] == pytest.approx(nmi, rel=1e-5)


def test_the_student_attends_explicitly_on_cpu_and_both_attention_paths_agree():
    from conftest import tiny_vit

    from hybrid_distill.models.attention import choose_attention, student_fused_attention

    # SDPA's bf16 backward is slower than the explicit path on the CPU (`hybrid-distill bench`): CUDA only
    assert not student_fused_attention(torch.device("cpu")) and student_fused_attention(torch.device("cuda"))
    model, images = tiny_vit(qkv_scale=4.0).eval(), torch.rand(2, 3, 28, 28)  # sharp attention: paths differ if wrong
    choose_attention(model, fused=True)
    fused = model.forward_features(images)
    choose_attention(model, fused=False)
    assert not any(b.attn.fused_attn for b in model.blocks)
    torch.testing.assert_close(model.forward_features(images), fused, rtol=1e-4, atol=1e-5)


def test_bf16_run_casts_teachers_and_keeps_fp32_targets_and_student(idx_folder, tmp_path):
    trainer = run(idx_folder, tmp_path, 2, **{"train.amp": "bf16"})
    assert all(p.dtype == torch.bfloat16 for p in trainer.teachers.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())
    last = [r for r in logged(trainer.run_dir) if "loss" in r][-1]
    assert last["skipped"] == 0.0 and last["loss"] > 0


def test_dataset_smaller_than_a_batch_fails_in_one_line(idx_folder, tmp_path, capsys):
    values = tiny_run_config(idx_folder, tmp_path, **{"optim.batch_size": 128})
    err = cli_error(capsys, ["train", str(write_yaml(tmp_path / "c.yaml", values))])
    assert "96 samples, fewer than one global batch of 128" in err


@pytest.mark.slow
def test_compiled_run_matches_eager_and_saves_the_same_keys(idx_folder, tmp_path):
    # train.compile compiles in place: same trajectory (to fp32 rounding), checkpoint keys without _orig_mod
    extra = {"student.drop_path": 0.0}  # compiled kernels draw other random numbers than eager ones
    eager = run(idx_folder, tmp_path / "eager", 2, **extra)
    compiled = run(idx_folder, tmp_path / "compiled", 2, **extra, **{"train.compile": True})
    assert compiled.student._compiled_call_impl is not None
    for (name, a), b in zip(eager.student.state_dict().items(), compiled.student.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    state = torch.load(files.list_checkpoints(compiled.run_dir)[-1], weights_only=True)
    assert state["model"].keys() == eager.student.state_dict().keys()


def test_compile_with_fsdp_fails_in_one_line(idx_folder, tmp_path):
    with pytest.raises(ConfigError, match="train.compile"):
        from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.compile": True, "train.fsdp": True}))


def test_a_new_student_submodule_is_saved_and_resumed_with_no_renaming(idx_folder, tmp_path, monkeypatch):
    import hybrid_distill.trainer as trainer_module

    def with_decoder(cfg, *args):  # a submodule the checkpoint code has never heard of
        student, teachers, records = build_models(cfg, *args)
        student.add_module("extra_head", torch.nn.Linear(48, 5).requires_grad_(False))  # no optimiser state
        return student, teachers, records

    monkeypatch.setattr(trainer_module, "build_models", with_decoder)
    first = run(idx_folder, tmp_path, 1)
    state = torch.load(files.list_checkpoints(first.run_dir)[-1], weights_only=True)["model"]
    assert torch.equal(state["extra_head.weight"], first.student.extra_head.weight.detach())
    resumed = Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"train.max_steps": 1})), resume="auto")
    assert torch.equal(resumed.student.extra_head.weight, first.student.extra_head.weight)
