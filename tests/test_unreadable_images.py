"""One policy for unreadable images in train, eval (k-NN, linear, fine-tune), analyze and the API: a
truncated JPEG and a 20000 x 20000 PNG (a decompression bomb) are skipped, counted and named in one
console line and a file; above the fraction the command stops in one line; the pixel limit is settable."""

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_run_config
from PIL import Image

import hybrid_distill
from hybrid_distill import cli
from hybrid_distill.data.errors import DataError
from hybrid_distill.data.unreadable import Checked, Policy
from hybrid_distill.files import save_model_file
from hybrid_distill.models.load import create_vit

SIDE = 20_000  # the bomb's side: 400,000,000 pixels, above Pillow's 89,478,485


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, side: int = SIDE) -> None:
    """A valid 1-bit grayscale PNG of side x side black pixels, compressed to about 50 kB (PNG spec: IHDR,
    one IDAT of filter byte 0 + packed rows, IEND)."""
    rows = zlib.compressobj(9)
    row = bytes(1 + side // 8)
    data = b"".join(rows.compress(row) for _ in range(side)) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def write_truncated_jpeg(path: Path, rng) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/: 20 readable images, a truncated JPEG (class a) and the bomb (class b); val/: 10 readable, one
    truncated JPEG. 2 of 22 and 1 of 11 unreadable: 9.1% each, under the default 10%."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 5)):
        for label in "ab":
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    write_truncated_jpeg(root / "train" / "a" / "truncated.jpg", rng)
    write_bomb(root / "train" / "b" / "bomb.png")
    write_truncated_jpeg(root / "val" / "b" / "truncated.jpg", rng)
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_model_file(create_vit("vit_tiny_patch16_224", **kw), "vit_tiny_patch16_224", kw, path)
    return path


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue().strip()


def names(path: Path) -> list[str]:
    return sorted(Path(line.split("\t")[1]).name for line in path.read_text().splitlines())


def test_a_truncated_jpeg_and_a_bomb_are_unreadable_with_their_reasons(folder):
    from torchvision.datasets import ImageFolder

    checked = Checked(ImageFolder(str(folder / "train")), Policy(), "train")
    unreadable = {i: checked.why(i) for i in range(len(checked)) if checked[i][1] < 0}
    by_name = {Path(checked.samples[i][0]).name: why for i, why in unreadable.items()}
    assert sorted(by_name) == ["bomb.png", "truncated.jpg"]
    assert by_name["bomb.png"] == (
        "400,000,000 pixels, above the limit of 89,478,485 (data.max_image_pixels; a decompression bomb guard)"
    )
    assert by_name["truncated.jpg"] == "OSError: Truncated File Read"
    assert len(folder.joinpath("train", "b", "bomb.png").read_bytes()) < 100_000  # the test stays small


def test_eval_knn_skips_counts_and_names_them_and_the_api_agrees(folder, model_file, tmp_path):
    code, err = run_cli(["eval", "knn", model_file, "--data", folder, "--k", "3", "--out", tmp_path / "cli"])
    assert code == 0, err
    listed = tmp_path / "cli" / "unreadable.txt"
    assert err.splitlines() == [
        f"{folder.name} train: 2 of 22 images unreadable (9.1%), skipped; names in {listed}",
        f"{folder.name} test: 1 of 11 images unreadable (9.1%), skipped; names in {listed}",
    ]
    assert names(tmp_path / "cli" / "unreadable.txt") == ["bomb.png", "truncated.jpg", "truncated.jpg"]
    result = json.loads(next((tmp_path / "cli").glob("knn-*.json")).read_text())
    assert (result["config"]["train_size"], result["config"]["test_size"]) == (20, 10)
    api = hybrid_distill.evaluate(model_file, folder, "knn", k=3, out=tmp_path / "api")
    assert api["top1"] == result["top1"] and api["config"]["train_size"] == 20


def test_eval_linear_and_finetune_skip_them(folder, model_file, tmp_path):
    args = ["--data", folder, "--out", tmp_path, "--epochs", "1", "--batch-size", "4"]
    code, err = run_cli(["eval", "linear", model_file, *args, "--no-cache"])
    assert code == 0 and "train: 2 of 22 images unreadable" in err and "test: 1 of 11" in err, err
    code, err = run_cli(["eval", "finetune", model_file, *args])
    assert code == 0 and "train: 2 of 22 images unreadable" in err and "test: 1 of 11" in err, err


def test_above_the_fraction_eval_stops_in_one_line(folder, model_file, tmp_path):
    argv = ["eval", "knn", model_file, "--data", folder, "--out", tmp_path, "--max-bad-fraction", "0.05"]
    code, err = run_cli(argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "2 of 22 images unreadable (9.1%)" in err and "above --max-bad-fraction=0.05" in err, err


def test_the_pixel_limit_is_settable(folder, model_file, tmp_path):
    """Every image has 32 x 32 = 1024 pixels: a limit of 1000 makes all of them unreadable."""
    code, err = run_cli(["eval", "knn", model_file, "--data", folder, "--out", tmp_path, "--max-image-pixels", "1000"])
    assert code == 2 and "22 of 22 images unreadable" in err, err
    assert "1,024 pixels, above the limit of 1,000 (--max-image-pixels" in (tmp_path / "unreadable.txt").read_text()


def test_analyze_skips_counts_and_names_them(folder, model_file, tmp_path):
    argv = ["analyze", model_file, "--data", folder / "train", "--num-images", "22", "--out", tmp_path]
    code, err = run_cli([*argv, "--no-figures"])
    assert code == 0, err
    assert err == f"analyze {folder / 'train'}: 2 of 22 images unreadable (9.1%), skipped; names in " + str(
        tmp_path / "unreadable.txt"
    )
    assert json.loads((tmp_path / "analysis.json").read_text())["data"]["num_images"] == 20


def test_training_says_them_on_the_console_and_in_bad_samples(folder, idx_folder, tmp_path):
    values = tiny_run_config(idx_folder, tmp_path / "runs", **{"optim.batch_size": 11, "train.epochs": 1})
    values["data"] = {"dataset": "folder", "path": str(folder), "img_size": 28, "num_workers": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    code, err = run_cli(["train", tmp_path / "c.yaml"])
    run = tmp_path / "runs" / "tiny"
    assert code == 0, err
    assert f"epoch 0: 2 of 22 images unreadable, each replaced by the next readable one; names in {run}" in err
    lines = (run / "bad_samples.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[1]).name for line in lines) == ["bomb.png", "truncated.jpg"]


def test_a_pixel_limit_that_is_not_a_count_is_refused():
    with pytest.raises(DataError, match="data.max_image_pixels=0 must be a whole number"):
        from hybrid_distill.data.unreadable import check_pixel_limit

        check_pixel_limit(0)
