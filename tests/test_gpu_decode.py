"""data.decode=gpu: the loader sends JPEG bytes and the crop draws of the PIL path (same per-sample
seeds); decoding on the CPU here (the same function the GPU runs) gives the PIL loader's images up to
resampling rounding. Refused in one line where it cannot run."""

import pytest
import torch
from conftest import tiny_run_config
from PIL import Image

from hybrid_distill.bench.input_pipeline import make_jpegs
from hybrid_distill.config import ConfigError, from_dict
from hybrid_distill.data.build import build_dataset, build_loader
from hybrid_distill.data.gpu_decode import EncodedBatch, check_gpu_decode, encoded_inputs
from hybrid_distill.trainer import Trainer


def folder_config(path, decode: str):
    values = tiny_run_config("/unused", "/unused")
    values["data"] = {"dataset": "folder", "path": str(path), "img_size": 64, "num_workers": 0, "decode": decode}
    values["student"]["model_kwargs"]["img_size"] = 64  # the student takes the crops' size
    return from_dict(values)


def first_batches(cfg, count: int = 2):
    dataset = build_dataset(cfg.data)
    loader, sampler = build_loader(cfg.data, dataset, 8, 8, cfg.seed)
    sampler.set_epoch(3)
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def test_gpu_decode_loader_gives_the_pil_loaders_crops(tmp_path):
    make_jpegs(tmp_path, 16, width=120, height=90)
    pil = first_batches(folder_config(tmp_path, "pil"))
    encoded = first_batches(folder_config(tmp_path, "gpu"))
    for (images, labels, bad), (batch, labels2, bad2) in zip(pil, encoded):
        assert isinstance(batch, EncodedBatch) and len(batch) == 8
        decoded = batch.decode(64, torch.device("cpu"))
        assert decoded.dtype == torch.uint8 and decoded.shape == images.shape
        diff = (decoded.float() - images.float()).abs()
        assert diff.mean() < 1.0 and diff.max() <= 8  # the same crops; bicubic rounding differs (PIL vs torch)
        assert torch.equal(labels, labels2) and torch.equal(bad, bad2)
    flips = torch.cat([b[0].params[:, 4] for b in encoded])
    assert 0 < flips.sum() < len(flips)  # both flipped and unflipped crops were compared


def test_a_non_jpeg_file_is_an_unreadable_sample(tmp_path):
    make_jpegs(tmp_path, 2, width=40, height=30)
    Image.new("RGB", (40, 30)).save(tmp_path / "synthetic" / "zz.png")
    cfg = folder_config(tmp_path, "gpu")
    dataset, _, _ = encoded_inputs(cfg.data, build_dataset(cfg.data))
    with pytest.raises(ValueError, match="JPEGs only"):
        dataset[len(dataset) - 1]


def test_gpu_decode_is_refused_in_one_line_off_cuda_and_without_files(idx_folder, tmp_path):
    with pytest.raises(ConfigError, match="data.decode=pil") as err:
        check_gpu_decode(torch.device("cpu"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.decode=pil"):
        Trainer(from_dict(tiny_run_config(idx_folder, tmp_path, **{"data.decode": "gpu", "train.device": "cpu"})))
    cfg = from_dict(tiny_run_config(idx_folder, tmp_path))
    with pytest.raises(ConfigError, match="folder or tar") as err:
        encoded_inputs(cfg.data, build_dataset(cfg.data))
    assert "\n" not in str(err.value)
