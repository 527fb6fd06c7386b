"""A teacher on another token grid than the student's: its feature map interpolated to the student's grid
(interpolate_features), beside match_grid's resized input; what cannot work on another grid refused."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, tiny_run_config, tiny_vit

from hybrid_distill.config import ConfigError, TeacherConfig, from_dict
from hybrid_distill.masking import KeepGiven
from hybrid_distill.models.teacher import Teacher
from hybrid_distill.trainer import Trainer


def last_block_output(model, pixels: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.blocks[-1].register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    with torch.no_grad():
        model.forward_features(pixels)
    handle.remove()
    return seen["x"]  # (B, 1 + L_t, D)


@pytest.mark.parametrize("student_grid", [(7, 7), (2, 2)])
def test_the_target_is_the_teachers_feature_map_resized_to_the_students_grid(student_grid):
    """A patch-7 teacher at 28 px (4 x 4 tokens): up to 7 x 7, down to 2 x 2 (antialiased); CLS as it is."""
    model = tiny_vit(patch_size=7).eval()
    cfg = TeacherConfig(arch="x", features=True, final_norm=False, whiten=False, interpolate_features=True)
    teacher = Teacher("sup", cfg, model, student_grid)
    images = torch.rand(2, 3, 28, 28)
    L = student_grid[0] * student_grid[1]
    keep = torch.stack([torch.arange(0, L, 2)[: L // 2], torch.arange(1, L, 2)[: L // 2]])  # (B, K) even, odd
    target = teacher(images, KeepGiven(keep)).features  # (B, 1 + K, D)
    x = last_block_output(model, teacher.normalize(images))
    grid = x[:, 1:].transpose(1, 2).reshape(2, 48, 4, 4)
    resized = F.interpolate(grid, size=student_grid, mode="bilinear", antialias=True).flatten(2).transpose(1, 2)
    expected = torch.cat([x[:, :1], torch.stack([resized[b, keep[b]] for b in range(2)])], dim=1)
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-5)


def test_a_constant_map_stays_constant_and_bilinear_weights_are_a_quarter_and_three_quarters():
    """Reference values: 2 x 2 -> 4 x 4 bilinear (align_corners=False) puts 3/4 of the nearer cell and
    1/4 of the farther at each of the two inner rows (1, 2): row values 0, 1 -> 0, 1/4, 3/4, 1."""
    model = tiny_vit(patch_size=14).eval()  # 2 x 2 tokens at 28 px
    teacher = Teacher("sup", TeacherConfig(arch="x", features=True, interpolate_features=True), model, (4, 4))
    x = torch.zeros(1, 1 + 4, 48)
    x[0, 3:, 0] = 1.0  # the bottom row of the 2 x 2 map holds 1 in channel 0
    out = teacher.on_student_grid(x)[0, 1:, 0].view(4, 4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.25, 0.75, 1.0]).view(4, 1).expand(4, 4))


def test_another_grid_without_interpolation_is_refused_naming_the_options():
    with pytest.raises(
        ConfigError, match=r"\(4, 4\) token grid .* \(7, 7\); set .*match_grid=true, .*interpolate_features=true"
    ):
        Teacher("sup", TeacherConfig(arch="x", features=True), tiny_vit(patch_size=7), (7, 7))


@pytest.mark.parametrize(
    "extra, said",
    [
        ({"teachers.sup.match_grid": True}, r"interpolate_features=true needs teachers\.sup\.match_grid=false"),
        ({"masking.teacher": "sup"}, r"masking\.teacher='sup' would pick tokens on another grid"),
        ({"teachers.sup.relation_blocks": [-2]}, r"relation_blocks relate tokens of another grid"),
    ],
)
def test_picking_or_relating_tokens_on_another_grid_is_refused_in_one_line(idx_folder, tmp_path, extra, said):
    values = tiny_run_config(
        idx_folder, tmp_path, **{"teachers.sup.match_grid": False, "teachers.sup.interpolate_features": True, **extra}
    )
    with pytest.raises(ConfigError, match=said) as err:
        from_dict(values)
    assert "\n" not in str(err.value)


def test_a_training_step_with_an_interpolated_patch_7_teacher(idx_folder, tmp_path):
    sup = {"model_kwargs": {**TINY, "patch_size": 7}, "match_grid": False, "interpolate_features": True}
    values = tiny_run_config(
        idx_folder, tmp_path, **{f"teachers.sup.{k}": v for k, v in sup.items()}, **{"train.max_steps": 1}
    )
    trainer = Trainer(from_dict(values))
    assert tuple(trainer.teachers.teachers["sup"].model.patch_embed.grid_size) == (4, 4)
    trainer.fit()
    logged = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["skipped"] == 0 and math.isfinite(logged["sup/feat"]) and logged["sup/feat"] > 0
    targets = trainer.teachers(torch.rand(2, 3, 28, 28))
    assert targets.features["sup"].shape == (2, 1 + 16, 48)  # CLS + the picker's 16 kept of 7 x 7
