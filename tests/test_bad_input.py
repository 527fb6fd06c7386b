"""Bad input to every command ends in one line on stderr naming the key or path, exit code 2, and
writes nothing into an existing run directory. In-process through `cli.main`: validation runs
before any model is built, so the whole table takes seconds."""

import contextlib
import gzip
import io
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import TINY, tiny_run_config, write_idx
from PIL import Image
from safetensors.torch import save_file

from hybrid_distill import cli
from hybrid_distill.files import save_model_file, sha256_file

TRAIN = ["train", "{d}/c.yaml", "--resume", "auto"]  # --resume: the existing run's own config cases
EVAL = ["eval", "knn", "vit_tiny_patch16_224", "--data", "fashion_mnist:{d}/fmnist"]
ANALYZE = ["analyze", "vit_tiny_patch16_224", "--data", "fashion_mnist:{d}/fmnist", "--out", "{d}/an"]
BENCH = ["bench", "{d}/c.yaml", "--device", "cpu", "--out", "{d}/bench/b.json"]


def train(*overrides):
    return TRAIN + list(overrides)


CONFIG_CASES = [
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-3", "train.epochs"),
    ("optim.blr=-1", "optim.blr"),
    ("optim.blr=0", "optim.blr"),
    ("data.hflip=2", "data.hflip"),
    ("data.hflip=-0.1", "data.hflip"),
    ("student.std=[0,0,0]", "student.std"),
    ("student.std=[1,1]", "student.std"),
    ("student.mean=[0.5]", "student.mean"),
    ("data.crop_scale=[1.5,0.1]", "data.crop_scale"),
    ("data.crop_scale=[0.5,0.2]", "data.crop_scale"),
    ("data.crop_scale=[0,1]", "data.crop_scale"),
    ("data.crop_scale=[0.2]", "data.crop_scale"),
    ("train.log_every=0", "train.log_every"),
    ("seed=-1", "seed"),
    ("seed=4294967296", "seed"),
    ("train.device=tpu", "train.device"),
    ("train.device=cuda:99", "train.device"),
    ("train.device=cuda:x", "train.device"),
    ("loss.beta=-1", "loss.beta"),
    ("loss.beta=0", "loss.beta"),
    ("name=../../escaped", "name"),
    ("name=a/b", "name"),
    ("name=..", "name"),
    ("name=.", "name"),
    ("name=", "name"),
    ("optim.batch_size=0", "optim.batch_size"),
    ("optim.accum_steps=0", "optim.accum_steps"),
    ("optim.accum_steps=3", "optim.batch_size"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.min_lr=-1", "optim.min_lr"),
    ("optim.clip_grad=-1", "optim.clip_grad"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.betas=[0.9,1.0]", "optim.betas"),
    ("optim.betas=[-0.1,0.9]", "optim.betas"),
    ("data.img_size=0", "data.img_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.limit=-5", "data.limit"),
    ("data.synthetic_size=0", "data.synthetic_size"),
    ("data.prefetch_factor=0", "data.prefetch_factor"),
    ("data.max_bad_fraction=1.5", "data.max_bad_fraction"),
    ("data.max_bad_fraction=-0.1", "data.max_bad_fraction"),
    ("data.bad_check_every=0", "data.bad_check_every"),
    ("data.interpolation=cubic", "data.interpolation"),
    ("data.num_samples=-1", "data.num_samples"),
    ("train.max_steps=-1", "train.max_steps"),
    ("train.ckpt_every_steps=-1", "train.ckpt_every_steps"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints"),
    ("train.monitor_every=-1", "train.monitor_every"),
    ("train.monitor_images=0", "train.monitor_images"),
    ("train.max_nonfinite_steps=-1", "train.max_nonfinite_steps"),
    ("train.good_state_every=-1", "train.good_state_every"),
    ("student.drop_path=1.5", "student.drop_path"),
    ("student.drop_path=-0.1", "student.drop_path"),
    ("masking.keep_ratio=0", "masking.keep_ratio"),
    ("masking.keep_ratio=1.5", "masking.keep_ratio"),
    ("masking.blocks=[99]", "masking.blocks"),
    ("masking.blocks=[-1]", "masking.blocks"),
    ("masking.teacher=nobody", "masking.teacher"),
    ("student.arch=vit_nonexistent_xyz", "student.arch"),
    ("teachers.sup.arch=not_a_model", "teachers.sup.arch"),
    ("student.arch=resnet18", "resnet18"),
    ("teachers.mim.relation_blocks=[12]", "teachers.mim.relation_blocks"),
    ("teachers.mim.relation_blocks=[-7]", "teachers.mim.relation_blocks"),
    ("teachers.sup.feature_block=6", "teachers.sup.feature_block"),
    ("teachers.sup.feature_block=-99", "teachers.sup.feature_block"),
    ("teachers.sup.weight=-1", "teachers.sup.weight"),
    # NaN compares false with every bound and inf passes every lower one: each is refused by name
    ("optim.blr=inf", "optim.blr"),
    ("optim.blr=nan", "optim.blr"),
    ("optim.weight_decay=nan", "optim.weight_decay"),
    ("loss.beta=inf", "loss.beta"),
    ("loss.beta=nan", "loss.beta"),
    ("optim.warmup_epochs=inf", "optim.warmup_epochs"),
    ("optim.warmup_epochs=nan", "optim.warmup_epochs"),
    ("student.mean=[nan,0.5,0.5]", "student.mean"),
    ("student.std=[inf,1,1]", "student.std"),
    ("optim.min_lr=inf", "optim.min_lr"),
    ("optim.clip_grad=nan", "optim.clip_grad"),
    ("masking.keep_ratio=nan", "masking.keep_ratio"),
    ("teachers.sup.weight=inf", "teachers.sup.weight"),
    ("teachers.mim.weight=nan", "teachers.mim.weight"),
    ("data.hflip=nan", "data.hflip"),
    ("student.drop_path=nan", "student.drop_path"),
    ("data.max_bad_fraction=nan", "data.max_bad_fraction"),
    ("optim.betas=[nan,0.9]", "optim.betas"),
    ("optim.betas=[0.9,inf]", "optim.betas"),
    ("data.crop_scale=[nan,1.0]", "data.crop_scale"),
    ("optim.blr=-inf", "optim.blr"),
    ("optim.betas.5=0.1", "optim.betas.5=0.1"),
    ("name=" + "a" * 300, "300 bytes long"),
    ("student.model_kwargs.embed_dim=50", "student.model_kwargs"),
    ("teachers.sup.model_kwargs.bogus_kw=1", "teachers.sup.model_kwargs"),
    ("optim.blr=abc", "optim.blr"),
    ("train.epochs=1.5", "train.epochs"),
    ("unknown.key=1", "unknown"),
    ("train.amp=fp8", "train.amp"),
    ("masking.strategy=sometimes", "masking.strategy"),
    ("teachers.mim.relation_kind=cosine", "relation_kind"),
    ("optim.blr", "optim.blr"),
    ("train.compile=true train.fsdp=true", "train.compile"),
    ("teachers.new.features=true", "teachers.new.arch"),
    ("teachers.sup.features=false", "teachers.sup"),
    ("optim.batch_size=512", "optim.batch_size"),
    ("data.dataset=folder", "data.path"),
    ("student.mask_recon.patch=0", "student.mask_recon.patch"),
    ("student.decoder=blocks student.decoder_depth=0", "student.decoder_depth"),
    ("student.mask_recon.style=simmim student.mask_recon.ratio=1.5", "student.mask_recon"),
]

# files that are not what they claim: each as a teacher's weights, an eval / analyze model and an export source
TEACHER_FILES = [
    "lying.safetensors",  # a header whose offsets run past the end of the file
    "huge_header.safetensors",  # a header length of 2**60
    "int8.pth",  # a tiny ViT's weights quantised to int8
    "notorch.pt",  # a zip archive of text files
    "arrays.npz",  # numpy's zip of arrays
    "truncated.pth",  # a real torch file cut in half
    "shapes.pth",  # a ViT of another width
    "list.pth",  # a pickled list of tensors
    "scalar.pth",  # a pickled number
    "strings.pth",  # a dict of strings, no tensor
    "nan.safetensors",  # the right keys and shapes, all NaN
    "empty_dict.pth",  # {}
]
MODEL_FILES = [
    "noconfig_ckpt.pt",  # our checkpoint format without its config
    "nokwargs_model.pt",  # our model file without model_kwargs
    "lying.safetensors",
    "notorch.pt",
    "arrays.npz",
    "truncated.pth",
    "list.pth",
    "empty_dict.pth",
]
DATA_CASES = [
    ("data.max_image_pixels=0", "data.max_image_pixels"),
    ("data.max_image_pixels=-5", "data.max_image_pixels"),
    ("data.max_image_pixels=1.5", "data.max_image_pixels"),
    ("data.dataset=folder data.path={d}/above", "{d}/above/imagenet/train"),
    ("data.dataset=wds data.path={d}/shards/s-{{0..1}}.tar data.num_samples=500", "hold 6 samples"),
    ("data.dataset=wds data.path={d}/shards/s-{{0..1}}.tar", "data.num_samples"),
    ("data.dataset=wds data.path={d}/shards/truncated.tar data.num_samples=3", "{d}/shards/truncated.tar"),
    ("data.dataset=wds data.path={d}/shards/s-{{0..1.tar data.num_samples=3", "unbalanced braces"),
    ("data.dataset=wds data.path={d}/shards/s-{{5..9}}.tar data.num_samples=3", "shards not found"),
    ("data.dataset=wds data.path={d}/shards/captions.tar data.num_samples=3", "no image key"),
    ("data.path={d}/truncidx", "{d}/truncidx"),
    ("data.path={d}/badmagic", "{d}/badmagic"),
    ("data.path={d}/afile", "{d}/afile"),
    ("data.dataset=folder data.path={d}/emptyfolder", "{d}/emptyfolder"),
    ("data.dataset=folder data.path={d}/afile", "{d}/afile"),
    ("data.dataset=tar data.path={d}/shards/truncated.tar", "{d}/shards/truncated.tar"),
    ("optim.batch_size=128 optim.accum_steps=1", "optim.batch_size"),
]
FLAG_CASES = [
    (["train", "{d}/c.yaml", "--dry-run", "data.img_size=32", "name=fresh"], "data.img_size"),
    (["train", "{d}/c.yaml", "--dry-run", "data.img_size=56", "name=fresh"], "data.img_size"),
    (["train", "{d}/c.yaml", "--init-from", "{d}/nokwargs_model.pt", "name=fresh"], "{d}/nokwargs_model.pt"),
    (["train", "{d}/c.yaml", "--init-from", "{d}/model.pt", "name=fresh"], "--init-from"),
    (["train", "{d}/c.yaml", "--init-from", "{d}/missing", "name=fresh"], "{d}/missing"),
    (["train", "{d}/c.yaml", "--init-from", "{d}/garbage.pt", "name=fresh"], "{d}/garbage.pt"),
    (["train", "{d}/c.yaml", "--resume", "{d}/noconfig_ckpt.pt"], "{d}/noconfig_ckpt.pt"),
    (["train", "{d}/c.yaml", "--resume", "{d}/model.pt"], "{d}/model.pt"),
    (EVAL + ["--max-bad-fraction", "2"], "--max-bad-fraction"),
    (EVAL + ["--max-bad-fraction", "nan"], "--max-bad-fraction"),
    (EVAL + ["--max-image-pixels", "0"], "--max-image-pixels"),
    (EVAL + ["--k", "-3"], "--k"),
    (EVAL + ["--temperature", "nan"], "--temperature"),
    (EVAL + ["--temperature", "inf"], "--temperature"),
    (EVAL + ["--crop-pct", "nan"], "--crop-pct"),
    (EVAL + ["--preset", "bogus"], "--preset"),
    (["eval", "finetune", "{d}/model.pt", "--data", "fashion_mnist:{d}/fmnist", "--batch-size", "200"], "fewer"),
    (["eval", "knn", "{d}/model.pt", "--data", "fashion_mnist:{d}/truncidx"], "{d}/truncidx"),
    (["eval", "knn", "{d}/model.pt", "--data", "{d}/emptyfolder"], "train/ and val/"),
    (["eval", "knn", "{d}/model.pt", "--data", "cifar100:{d}/missing"], "cifar100"),
    (ANALYZE + ["--max-bad-fraction", "-1"], "--max-bad-fraction"),
    (ANALYZE + ["--max-image-pixels", "0"], "--max-image-pixels"),
    (ANALYZE + ["--seed", "-1"], "--seed"),
    (ANALYZE + ["--split", "val"], "--split"),
    (["analyze", "{d}/model.pt", "--data", "fashion_mnist:{d}/truncidx", "--out", "{d}/an"], "{d}/truncidx"),
    (["export", "{d}/runs/tiny", "--out", "/dev/full"], "/dev/full"),
    (["export", "{d}/runs/tiny", "--out", "/dev/full.pth"], "--out"),
    (["export", "{d}/runs/tiny", "--format", "bogus", "--out", "{d}/x.pth"], "--format"),
    (["export", "{d}/runs/tiny", "--format", "mmseg", "--out", "{d}/x.safetensors"], "--out"),
    (["export", "{d}/noconfig_ckpt.pt", "--out", "{d}/y.pth"], "{d}/noconfig_ckpt.pt"),
    (BENCH[:-1] + ["{d}/nockpt"], "--out"),
    (BENCH + ["--deadline", "-1"], "--deadline"),
    (BENCH + ["--deadline", "0"], "--deadline"),
    (BENCH + ["--deadline", "nan"], "--deadline"),
    (BENCH + ["--batch", "-4"], "--batch"),
    (BENCH + ["--steps", "abc"], "--steps"),
    (BENCH + ["data.img_size=0"], "data.img_size"),
    (["teachers", "prefetch", "vit_base_patch16_224.mae", "--cache", "/dev/full/c"], "--cache"),
    (["demo", "--out", "{d}/demo3", "--data", "{d}/truncidx"], "{d}/truncidx"),
]

CASES = (
    [(train(*o.split()), key) for o, key in CONFIG_CASES]
    + [
        (["train", "{d}/dup.yaml"], "key 'blr' appears twice"),
        (["train", "{d}/bomb.yaml"], "expands to more than 100,000 values"),
        (["train", "{d}/base5.yaml"], "base=5 must be a file name"),
        (["train", "{d}/interp.yaml"], "cannot resolve"),
        (["train", "{d}/newline.yaml"], "must be one folder name"),
        (["train", "{d}/c.yaml", "name=${{nope.x}}"], "cannot resolve"),
        (train("teachers.sup.weights={d}/garbage.pt"), "{d}/garbage.pt"),
        (train("teachers.sup.weights={d}/empty.pt"), "{d}/empty.pt"),
        (train("teachers.sup.weights={d}/missing.pt"), "{d}/missing.pt"),
        (train("teachers.sup.weights={d}/nockpt"), "{d}/nockpt"),
        (train("output_dir={d}/afile/sub"), "output_dir"),
        (train("output_dir={d}/afile"), "output_dir"),
        (train("data.path={d}/missing"), "{d}/missing"),
        (train("data.dataset=folder", "data.path={d}/missing"), "{d}/missing"),
        (["train", "{d}/missing.yaml"], "{d}/missing.yaml"),
        (["train", "{d}/notyaml.yaml"], "{d}/notyaml.yaml"),
        (["train", "{d}/list.yaml"], "{d}/list.yaml"),
        (["train", "{d}/scalar.yaml"], "{d}/scalar.yaml"),
        (["train", "{d}/binary.yaml"], "{d}/binary.yaml"),
        (["train", "{d}/unknown.yaml"], "bogus"),
        (["train", "{d}/c.yaml"], "--resume auto"),  # a fresh run into the existing run directory
        (["train", "{d}/c.yaml", "--resume", "{d}/missing.pt"], "{d}/missing.pt"),
        (["train", "{d}/c.yaml", "--resume", "{d}/garbage.pt"], "{d}/garbage.pt"),
        (["train", "{d}/c.yaml", "--resume", "{d}/nockpt"], "{d}/nockpt"),
        (["train", "{d}/c.yaml", "--resume", "auto", "name=corrupt"], "--resume auto"),
        (["train"], "config"),
        (["train", "{d}/c.yaml", "--bogus"], "--bogus"),
        (EVAL + ["--batch-size", "0"], "--batch-size"),
        (EVAL + ["--k", "0"], "--k"),
        (EVAL + ["--temperature", "0"], "--temperature"),
        (EVAL + ["--epochs", "0"], "--epochs"),
        (EVAL + ["--crop-pct", "0"], "--crop-pct"),
        (EVAL + ["--crop-pct", "1.5"], "--crop-pct"),
        (EVAL + ["--device", "tpu"], "--device"),
        (EVAL + ["--out", "{d}/afile/x"], "--out"),
        (EVAL + ["--pool", "max"], "--pool"),
        (EVAL + ["--batch-size", "abc"], "--batch-size"),
        (["eval", "knn", "{d}/garbage.pt", "--data", "fashion_mnist"], "{d}/garbage.pt"),
        (["eval", "knn", "{d}/empty.pt", "--data", "fashion_mnist"], "{d}/empty.pt"),
        (["eval", "knn", "{d}/missing.pt", "--data", "fashion_mnist"], "{d}/missing.pt"),
        (["eval", "knn", "{d}/nockpt", "--data", "fashion_mnist"], "{d}/nockpt"),
        (["eval", "knn", "not_a_model_xyz", "--data", "fashion_mnist"], "not_a_model_xyz"),
        (["eval", "knn", "vit_tiny_patch16_224", "--data", "{d}/missing"], "{d}/missing"),
        (["eval", "badprotocol", "vit_tiny_patch16_224", "--data", "x"], "protocol"),
        (["eval", "knn", "vit_tiny_patch16_224"], "--data"),
        (ANALYZE[:1] + ["{d}/garbage.pt"] + ANALYZE[2:], "{d}/garbage.pt"),
        (ANALYZE[:1] + ["not_a_model_xyz"] + ANALYZE[2:], "not_a_model_xyz"),
        (ANALYZE + ["--num-images", "0"], "--num-images"),
        (ANALYZE + ["--batch-size", "0"], "--batch-size"),
        (ANALYZE + ["--map-images", "-1"], "--map-images"),
        (ANALYZE + ["--layers", "0"], "--layers"),
        (ANALYZE + ["--queries", "abc"], "--queries"),
        (ANALYZE + ["--queries", "1.5,0.5"], "--queries"),
        (ANALYZE + ["--device", "tpu"], "--device"),
        (ANALYZE[:-1] + ["{d}/afile/x"], "--out"),
        (ANALYZE + ["--img-size", "0"], "--img-size"),
        (ANALYZE + ["--workers", "-1"], "--workers"),
        (ANALYZE + ["--num-images", "100000"], "--num-images"),
        (["analyze", "vit_tiny_patch16_224", "--data", "{d}/missing", "--out", "{d}/an"], "{d}/missing"),
        (["export", "{d}/garbage.pt", "--out", "{d}/x.safetensors"], "{d}/garbage.pt"),
        (["export", "{d}/empty.pt", "--out", "{d}/x.safetensors"], "{d}/empty.pt"),
        (["export", "{d}/missing.pt", "--out", "{d}/x.safetensors"], "{d}/missing.pt"),
        (["export", "vit_tiny_patch16_224", "--out", "{d}/x.safetensors"], "vit_tiny_patch16_224"),
        (["export", "{d}/nockpt", "--out", "{d}/x.safetensors"], "{d}/nockpt"),
        (["export", "{d}/runs/tiny", "--out", "{d}/afile/x.safetensors"], "--out"),
        (["export", "{d}/runs/tiny", "--format", "onnx", "--out", "{d}/x"], "--format"),
        (["export", "{d}/runs/tiny"], "--out"),
        (
            ["export", "{d}/runs/tiny", "--out", "{d}/runs/tiny/checkpoints/checkpoint-00000001.pt"],
            "checkpoints/ folder",
        ),
        (["export", "{d}/runs/tiny", "--out", "{d}/runs/tiny/checkpoints/new.pth"], "checkpoints/ folder"),
        (["export", "{d}/runs/tiny", "--out", "{d}/garbage.pt"], "{d}/garbage.pt exists and was not written by"),
        (["export", "{d}/runs/tiny", "--out", "{d}/nockpt/../olddemo"], "was not written by hybrid-distill export"),
        (["export", "{d}/runs/tiny", "--out", "{d}/x.onnx"], "not '.onnx'"),
        (["export", "{d}/runs/tiny", "--format", "mae", "--out", "{d}/x.safetensors"], "writes FILE.pth"),
        (["teachers", "prefetch", "not_a_model_xyz", "--cache", "{d}/cache"], "not_a_model_xyz"),
        (["teachers", "prefetch", "vit_base_patch16_224.mae", "--cache", "{d}/afile/c"], "--cache"),
        (["teachers", "bogus"], "bogus"),
        (["teachers", "prefetch", "--cache", "{d}/c"], "names"),
        (BENCH + ["--batch", "0"], "--batch"),
        (BENCH + ["--steps", "0"], "--steps"),
        (BENCH + ["--warmup", "-1"], "--warmup"),
        (BENCH + ["--device", "tpu"], "--device"),
        (BENCH[:-1] + ["{d}/afile/b.json"], "--out"),
        (BENCH + ["train.epochs=0"], "train.epochs"),
        (["bench", "{d}/missing.yaml"], "{d}/missing.yaml"),
        (BENCH + ["--precision", "fp8"], "--precision"),
        (BENCH + ["--student", "not_a_model_xyz"], "student.arch"),
        (["demo", "--out", "{d}/afile/x"], "--out"),
        (["demo", "--out", "{d}/demo2", "--data", "{d}/missing"], "{d}/missing"),
        (["demo", "--out", "{d}/olddemo"], "--out"),
        (["demo", "--bogus"], "--bogus"),
        (["study", "{d}/missing.yaml"], "{d}/missing.yaml"),
        (["study", "{d}/unknown.yaml"], "'bogus'"),
        (["bogus-command"], "bogus-command"),
    ]
    + [(train(f"teachers.sup.weights={{d}}/{name}"), f"{{d}}/{name}") for name in TEACHER_FILES]
    + [
        (["eval", "knn", f"{{d}}/{name}", "--data", "fashion_mnist:{d}/fmnist"], f"{{d}}/{name}")
        for name in MODEL_FILES
    ]
    + [(["export", f"{{d}}/{name}", "--out", "{d}/x.safetensors"], f"{{d}}/{name}") for name in MODEL_FILES]
    + [(ANALYZE[:1] + [f"{{d}}/{name}"] + ANALYZE[2:], f"{{d}}/{name}") for name in MODEL_FILES]
    + [(train(*o.split()), key) for o, key in DATA_CASES]
    + FLAG_CASES
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 96), ("t10k", 32)):
        write_idx(d / "fmnist", prefix, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
    (d / "c.yaml").write_text(yaml.safe_dump(tiny_run_config(d / "fmnist", d / "runs")))
    (d / "notyaml.yaml").write_text("optim: {blr: [1e-4\n  - :")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "scalar.yaml").write_text("hello\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)))
    (d / "unknown.yaml").write_text("bogus: 1\n")
    (d / "dup.yaml").write_text("optim:\n  blr: 1.0e-4\n  blr: 2.0e-4\n")  # YAML would keep the last silently
    laughs = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']  # the 'billion laughs': 9^9 nodes
    laughs += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    (d / "bomb.yaml").write_text("\n".join(laughs) + "\n")
    (d / "base5.yaml").write_text("base: 5\n")
    (d / "interp.yaml").write_text("name: ${oc.env:HYBRID_DISTILL_NOT_SET_XYZ}\n")
    (d / "newline.yaml").write_text('name: "a\\nb"\n')
    (d / "garbage.pt").write_bytes(os.urandom(2000).replace(b"PK", b"pk"))
    (d / "empty.pt").write_bytes(b"")
    (d / "afile").write_text("a file, not a folder")
    (d / "nockpt").mkdir()
    (d / "olddemo" / "students" / "hybrid").mkdir(parents=True)
    weight_files(d)
    data_files(d)
    for name in ("tiny", "corrupt"):  # existing runs: config, metrics, a checkpoint with its checksum
        run = d / "runs" / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("old\n")
        (run / "metrics.jsonl").write_text('{"step": 1}\n')
        saved = run / "checkpoints" / "checkpoint-00000001.pt"
        saved.write_bytes(b"PK\x03\x04 not really")
        (run / "checkpoints" / "checkpoint-00000001.pt.sha256").write_text(
            ("0" * 64 if name == "corrupt" else sha256_file(saved)) + "\n"
        )
    return d


def weight_files(d):
    """Files that are not what their names claim (TEACHER_FILES, MODEL_FILES) and one good model file."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY)
    state = vit.state_dict()
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    (d / "lying.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    (d / "huge_header.safetensors").write_bytes((2**60).to_bytes(8, "little") + b"{}")
    torch.save({k: v.to(torch.int8) for k, v in state.items()}, d / "int8.pth")
    with zipfile.ZipFile(d / "notorch.pt", "w") as archive:
        archive.writestr("readme.txt", "not a torch file")
    np.savez(d / "arrays.npz", w=np.zeros(3))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (d / "truncated.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    wider = timm.create_model("vit_tiny_patch16_224", num_classes=0, **{**TINY, "embed_dim": 96})
    torch.save(wider.state_dict(), d / "shapes.pth")
    torch.save(list(state.values())[:3], d / "list.pth")
    torch.save(5, d / "scalar.pth")
    torch.save({"a": "b"}, d / "strings.pth")
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(d / "nan.safetensors"))
    torch.save({}, d / "empty_dict.pth")
    torch.save({"format": "hybrid-distill-checkpoint", "model": state, "step": 1}, d / "noconfig_ckpt.pt")
    model = {"format": "hybrid-distill-model", "arch": "vit_tiny_patch16_224", "state_dict": state}
    torch.save({**model, "mean": [0.5] * 3, "std": [0.5] * 3}, d / "nokwargs_model.pt")
    save_model_file(vit, "vit_tiny_patch16_224", dict(TINY), d / "model.pt")


def data_files(d):
    """A folder one level above its train/ and val/, shards (two of 3 samples, a truncated one, one of
    captions only), Fashion-MNIST files cut short or with a wrong magic number, an empty folder."""
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, "PNG")
    for split in ("train", "val"):
        (d / "above" / "imagenet" / split / "a").mkdir(parents=True)
        (d / "above" / "imagenet" / split / "a" / "0.png").write_bytes(image.getvalue())
    (d / "shards").mkdir()
    for shard, members in (
        ("s-0", {"png": image.getvalue()}),
        ("s-1", {"png": image.getvalue()}),
        ("captions", {"txt": b"a cat"}),
    ):
        with tarfile.open(d / "shards" / f"{shard}.tar", "w") as tar:
            for i in range(3):
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{shard}_{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    whole = (d / "shards" / "s-0.tar").read_bytes()
    (d / "shards" / "truncated.tar").write_bytes(whole[:700])
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 96), ("t10k", 32)):
        write_idx(d / "truncidx", prefix, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        images = d / "truncidx" / f"{prefix}-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000]))
        write_idx(d / "badmagic", prefix, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        images = d / "badmagic" / f"{prefix}-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + gzip.decompress(images.read_bytes())[4:]))
    (d / "emptyfolder").mkdir()


def snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def case_id(argv: list[str]) -> str:
    return " ".join(argv[:1] + argv[2:] if argv[0] == "train" else argv)[:80]


PARAMS = [pytest.param(a, n, id=case_id(a)) for a, n in CASES]


@pytest.mark.parametrize("argv,named", PARAMS)
def test_bad_input_ends_in_one_line_naming_it(world, argv, named, monkeypatch):
    monkeypatch.chdir(world)
    runs, tree = snapshot(world / "runs"), sorted(world.rglob("*"))
    code, err = run_cli([a.format(d=world) for a in argv])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert named.format(d=world) in err, err
    assert snapshot(world / "runs") == runs
    assert sorted(world.rglob("*")) == tree  # no stray file or folder, no temp file left
    assert not (world.parent / "escaped").exists() and not os.path.exists("/dev/full.pth")  # name=../../escaped


def test_the_table_has_a_case_for_every_command_the_cli_offers():
    commands = {argv[0] for argv, _ in CASES} - {"bogus-command"}
    assert commands == {"train", *cli.DELEGATED}  # a new command without a bad-input case fails here
