"""WebDataset shards: training, exact resume from the stream, broken samples reported."""

import io

import numpy as np
import pytest
import torch
from conftest import tiny_run_config
from helpers import logged
from PIL import Image

from hybrid_distill.config import from_dict
from hybrid_distill.data.build import DataError, build_dataset
from hybrid_distill.trainer import Trainer

wds = pytest.importorskip("webdataset")


@pytest.fixture
def shards(tmp_path):
    """4 shards x 24 PNGs with .cls; sample 5 of shard 0 is broken bytes."""

    def entries(s, i, png):
        return {"png": b"not a png" if (s, i) == (0, 5) else png, "cls": str(i % 10).encode()}

    return write_shards(tmp_path, entries, count=4, fmt="PNG", seed=0, prefix="train")


def stream_config(idx_folder, out, urls, **extra):
    values = tiny_run_config(idx_folder, out, **extra)
    values["data"] = {"dataset": "wds", "path": urls, "num_samples": 96, "img_size": 28, "num_workers": 2}
    return from_dict(values)


@pytest.mark.slow  # default suite: test_shards_without_labels_train; exact resume in test_train.py
def test_shards_train_resume_exactly_and_report_broken_samples(idx_folder, tmp_path, shards):
    whole = Trainer(stream_config(idx_folder, tmp_path / "a", shards, **{"train.max_steps": 8}))
    whole.fit()
    assert whole.step == 8
    half = stream_config(idx_folder, tmp_path / "b", shards, **{"train.max_steps": 4})
    Trainer(half).fit()
    resumed = Trainer(stream_config(idx_folder, tmp_path / "b", shards, **{"train.max_steps": 8}), resume="auto")
    resumed.fit()
    for a, b in zip(whole.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    assert sum(r.get("bad_samples", 0) for r in logged(whole.run_dir)) >= 1
    lines = (whole.run_dir / "bad_samples.txt").read_text().splitlines()
    assert lines and all("shard stream position" in line for line in lines)


def test_missing_shards_and_missing_sample_count_fail_clearly(idx_folder, tmp_path, shards):
    cfg = stream_config(idx_folder, tmp_path, shards.replace("003", "009"))
    with pytest.raises(DataError, match="shards not found"):
        build_dataset(cfg.data)
    cfg.data.num_samples = 0
    with pytest.raises(DataError, match="data.num_samples"):
        build_dataset(cfg.data)


def write_shards(folder, entries, count=2, fmt="JPEG", seed=1, prefix="web") -> str:
    """`count` shards x 24 random 28x28 images; entries(shard, i, image_bytes) -> the sample's dict
    without __key__."""
    rng = np.random.default_rng(seed)
    for s in range(count):
        with wds.TarWriter(str(folder / f"{prefix}-{s:03d}.tar")) as sink:
            for i in range(24):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format=fmt)
                sink.write({"__key__": f"{s:03d}_{i:03d}", **entries(s, i, buffer.getvalue())})
    return str(folder / f"{prefix}-{{000..{count - 1:03d}}}.tar")


def test_shards_without_labels_train(idx_folder, tmp_path):
    # jpg + txt captions, as most web shards: distillation needs no label
    urls = write_shards(tmp_path, lambda s, i, jpg: {"jpg": jpg, "txt": f"caption {i}".encode()})
    cfg = stream_config(idx_folder, tmp_path / "run", urls, **{"train.max_steps": 2})
    cfg.data.num_samples, cfg.data.num_workers = 48, 0
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.step == 2


def test_shards_without_an_image_name_the_missing_key(tmp_path):
    urls = write_shards(tmp_path, lambda s, i, jpg: {"txt": b"a caption", "json": b"{}"})
    data = from_dict({"data": {"dataset": "wds", "path": urls, "num_samples": 48, "num_workers": 0}}).data
    with pytest.raises(DataError, match=r"no image key \(jpg/.*its keys: json, txt"):
        build_dataset(data)


def test_stream_batches_mix_shards_and_repeat_with_the_seed(tmp_path):
    urls = write_shards(tmp_path, lambda s, i, jpg: {"jpg": jpg, "cls": str(s * 24 + i).encode()})
    stream = build_dataset(from_dict({"data": {"dataset": "wds", "path": urls, "num_samples": 48}}).data)
    stream.transform = lambda image: torch.zeros(1)

    def take():
        return [sample[1] for _, sample in zip(range(16), iter(stream))]

    first = take()
    assert {label // 24 for label in first} == {0, 1}  # one batch holds samples of both shards
    assert first != sorted(first) and first == take()  # shuffled, and the same stream after a restart
