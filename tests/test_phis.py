"""PHI-S and per-channel standardisation of a teacher's feature targets (models/phis.py): the formula on
a matrix worked by hand, isotropy of the output, estimation on the first batches only, and a resume that
continues the statistics exactly."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_run_config

from hybrid_distill import files
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.models.phis import TargetNormalizer, hadamard
from hybrid_distill.trainer import Trainer


def test_phis_of_four_points_worked_by_hand():
    # mu = 0, Sigma = diag(4, 1) (population), U = I, H = [[1, 1], [1, -1]] / sqrt 2, alpha = sqrt(5 / 2):
    # x' = H x / alpha, e.g. (2, 1) -> (3, 1) / sqrt 2 / sqrt 2.5 = (3, 1) / sqrt 5
    x = torch.tensor([[2.0, 1.0], [-2.0, 1.0], [2.0, -1.0], [-2.0, -1.0]])
    out = TargetNormalizer("phis", 2)(x)
    expected = torch.tensor([[3.0, 1.0], [-1.0, -3.0], [1.0, 3.0], [-3.0, -1.0]]) / math.sqrt(5.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_phis_equals_the_formula_written_out_in_numpy():
    """x' = H U^T (x - mu) / sqrt(tr(Sigma) / C), U by decreasing eigenvalue, each column's largest entry
    positive; H of order 12 from Paley's construction (q = 11)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
    mu = x.mean(0)
    sigma = (x - mu).T @ (x - mu) / len(x)
    values, u = np.linalg.eigh(sigma)
    u = u[:, np.argsort(-values)]
    u = u * np.sign(u[np.abs(u).argmax(0), np.arange(12)])
    h = hadamard(12).numpy()
    expected = (x - mu) @ u @ h.T / np.sqrt(np.trace(sigma) / 12)
    out = TargetNormalizer("phis", 12)(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-5)
    assert np.allclose(h @ h.T, np.eye(12)) and np.allclose(np.abs(h) * np.sqrt(12), 1.0)


@pytest.mark.parametrize("dim", [48, 64, 768])
def test_phis_output_is_isotropic_and_keeps_the_spectrum(dim):
    """Channels of scales 1e-3 .. 1e3 come out with unit variance each; the rotation keeps the
    eigenvalues (divided by alpha^2); the mean is 0."""
    torch.manual_seed(0)
    scales = torch.logspace(-3, 3, dim, dtype=torch.float64)
    x = (torch.randn(4 * dim, dim, dtype=torch.float64) * scales) @ torch.linalg.qr(torch.randn(dim, dim))[0].double()
    x = x + 5.0
    out = TargetNormalizer("phis", dim)(x.float()).double()
    cov_in, cov_out = torch.cov(x.T, correction=0), torch.cov(out.T, correction=0)
    torch.testing.assert_close(cov_out.diagonal(), torch.ones(dim, dtype=torch.float64), rtol=0, atol=2e-4)
    alpha2 = cov_in.trace() / dim
    torch.testing.assert_close(
        torch.linalg.eigvalsh(cov_out), torch.linalg.eigvalsh(cov_in) / alpha2, rtol=1e-3, atol=1e-4
    )
    torch.testing.assert_close(out.mean(0), torch.zeros(dim, dtype=torch.float64), rtol=0, atol=1e-4)


def test_standard_gives_each_channel_unit_variance_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(1000, 8) * torch.tensor([1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1.0]) + 3.0
    out = TargetNormalizer("standard", 8)(x)
    torch.testing.assert_close(out.std(0, correction=0), torch.ones(8), rtol=1e-4, atol=0)
    torch.testing.assert_close(out, (x - x.mean(0)) / x.std(0, correction=0), rtol=1e-4, atol=1e-4)


def test_statistics_come_from_the_first_batches_only():
    torch.manual_seed(0)
    norm = TargetNormalizer("phis", 4, batches=2)
    first = [torch.randn(16, 3, 4) for _ in range(2)]
    for batch in first:
        norm(batch)
    frozen = {k: v.clone() for k, v in norm.state_dict().items()}
    norm(100.0 * torch.randn(16, 3, 4))  # a third batch, far off: ignored
    assert all(torch.equal(frozen[k], v) for k, v in norm.state_dict().items())
    alone = TargetNormalizer("phis", 4, batches=1)
    alone(torch.cat(first).reshape(-1, 4))  # the same tokens in one batch: the same transform
    torch.testing.assert_close(alone.matrix, norm.matrix)
    tokens = torch.cat(first).reshape(-1, 4)
    assert norm.scale() == pytest.approx(torch.cov(tokens.T, correction=0).trace().div(4).sqrt().item(), rel=1e-6)


def test_a_width_with_no_hadamard_matrix_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"no Hadamard matrix of order 10 .* use normalize=standard"):
        hadamard(10)


def test_normalize_with_whitening_is_refused_in_one_line(idx_folder, tmp_path):
    values = tiny_run_config(idx_folder, tmp_path, **{"teachers.sup.normalize": "phis"})
    said = r"teachers\.sup\.normalize=phis .* set teachers\.sup\.features=true and teachers\.sup\.whiten=false"
    with pytest.raises(ConfigError, match=said):
        from_dict(values)


def phis_run(idx_folder, out, resume=None, **extra):
    values = tiny_run_config(
        idx_folder, out, **{"teachers.sup.normalize": "phis", "teachers.sup.whiten": False, **extra}
    )
    trainer = Trainer(from_dict(values), resume=resume)
    trainer.fit()
    return trainer


def losses(trainer) -> dict[int, dict]:
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def test_a_resume_mid_estimation_continues_the_statistics_exactly(idx_folder, tmp_path):
    """Stopped at step 4 of the 10 estimation batches, resumed to 12: the same losses and logged scales
    as the uninterrupted run (6 steps an epoch on the tiny data)."""
    whole = losses(phis_run(idx_folder, tmp_path / "whole"))
    stopped = phis_run(idx_folder, tmp_path / "parts", **{"train.max_steps": 4})
    saved = files.load_checkpoint(files.newest_checkpoint(stopped.run_dir))["teachers"]["sup"]
    assert int(saved["seen"]) == 4 and saved["outer"].dtype == torch.float64
    resumed = losses(phis_run(idx_folder, tmp_path / "parts", resume="auto"))
    assert sorted(resumed) == list(range(1, 13))  # one metrics file: steps 1-4, then the resumed 5-12
    for step in range(5, 13):
        assert resumed[step]["sup/feat"] == pytest.approx(whole[step]["sup/feat"], rel=1e-5)
        assert resumed[step]["sup/target_scale"] == pytest.approx(whole[step]["sup/target_scale"], rel=1e-6)
    assert whole[10]["sup/target_scale"] == whole[12]["sup/target_scale"] != whole[4]["sup/target_scale"]


def test_a_cell_key_leaves_out_normalize_at_its_default_and_keeps_it_otherwise(idx_folder, tmp_path):
    """study/cell.py: the published cells were keyed before `normalize` existed; a non-default value is a
    different student and gets a different key."""
    from hybrid_distill.study.cell import digest, student_inputs

    values = tiny_run_config(idx_folder, tmp_path)
    plain = student_inputs(from_dict(values))
    assert "normalize" not in plain["config"]["teachers"]["sup"]
    assert "interpolate_features" not in plain["config"]["teachers"]["sup"]
    values["teachers"]["sup"].update(normalize="standard", whiten=False)
    phis = student_inputs(from_dict(values))
    assert phis["config"]["teachers"]["sup"]["normalize"] == "standard"
    assert digest(phis) != digest(plain)
