"""`hybrid-distill bench --input-pipeline DIR`: JPEG decode + RandomResizedCrop + flip, images per second.

Paths: 'pil' (the loader's default: PIL decode, torchvision's PIL transforms), 'torchvision cpu'
(torchvision.io.decode_jpeg on the CPU, crop and antialiased resize on tensors) and, on CUDA, 'gpu'
(data.decode=gpu: batched nvJPEG decode, crops on the GPU; the CPU only reads files and draws crops,
timed on its own as 'gpu loader side'). CPU paths run in one thread of one process: images per second
per core. Every path's CPU seconds per image give the cores per GPU it needs to keep a step of
--step-img-s images per second fed.
With --make N, DIR is filled first with N JPEGs of 400 x 350 px at quality 90 (ImageNet's typical
size); their content is smooth random colour plus noise, so sizes are near natural photos'.

    hybrid-distill bench --input-pipeline /tmp/jpegs --make 512 --seconds 5
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.gpu_decode import EncodedCrop, crop_resize_flip, decode_crop_flip
from ..data.transforms import pretrain_transform
from .harness import device_from, write_result

SUFFIXES = (".jpg", ".jpeg")


def parse(argv):
    p = argparse.ArgumentParser(prog="hybrid-distill bench --input-pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder of JPEGs (searched recursively)")
    p.add_argument("--make", type=int, default=0, help="first write this many 400 x 350 quality-90 JPEGs there")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=5.0, help="time per path")
    p.add_argument("--gpu-batch", type=int, default=256, help="images per batched GPU decode call")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda adds the GPU path)")
    p.add_argument("--step-img-s", type=float, default=None, help="the training step's img/s per GPU to feed")
    p.add_argument("--step-json", default=None, help="read --step-img-s from a bench JSON (optimised step)")
    p.add_argument("--out", default=None, help="result JSON")
    return p.parse_args(argv)


def make_jpegs(folder: Path, count: int, width: int = 400, height: int = 350, quality: int = 90) -> None:
    """Smooth random colour (a 1/16 scale grid, bicubic up) plus pixel noise, as natural photos' sizes."""
    folder = folder / "synthetic"  # one class folder: also a data.dataset=folder tree
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"img_{i:05d}.jpg", quality=quality)


def list_jpegs(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jpg/.jpeg files under {folder}: pass --make N to write some")
    return files


def run_for(seconds: float, one) -> tuple[int, float, float]:
    """Call one(i) for i = 0, 1, ... until `seconds` pass: (items, wall s, process CPU s)."""
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        count += one(count)
    return count, time.perf_counter() - start, time.process_time() - cpu


def pil_path(files: list[Path], size: int):
    transform = pretrain_transform(size)

    def one(i: int) -> int:
        torch.manual_seed(i)
        with Image.open(files[i % len(files)]) as image:  # what the folder dataset does, then the transform
            transform(image.convert("RGB"))
        return 1

    return one


def torchvision_cpu_path(files: list[Path], size: int):
    encode = EncodedCrop()

    def one(i: int) -> int:
        torch.manual_seed(i)
        data, params = encode(files[i % len(files)].read_bytes())
        from torchvision.io import ImageReadMode, decode_jpeg

        crop_resize_flip(decode_jpeg(data, mode=ImageReadMode.RGB), params, size)
        return 1

    return one


def loader_side_path(files: list[Path]):
    """What a loader worker does for data.decode=gpu: read the file, its size, draw the crop."""
    encode = EncodedCrop()

    def one(i: int) -> int:
        torch.manual_seed(i)
        encode(files[i % len(files)].read_bytes())
        return 1

    return one


def gpu_path(files: list[Path], size: int, batch: int, device: torch.device):
    """Batched nvJPEG decode + crops on the GPU, from bytes already in memory (the loader's output)."""
    encode = EncodedCrop()
    items = [encode(files[k % len(files)].read_bytes()) for k in range(batch)]
    encoded, params = [d for d, _ in items], torch.stack([p for _, p in items])

    def one(i: int) -> int:
        out = decode_crop_flip(encoded, params, size, device)
        torch.cuda.synchronize(device)
        return out.shape[0]

    return one


def step_rate(args) -> float | None:
    if args.step_img_s:
        return args.step_img_s
    if args.step_json and Path(args.step_json).is_file():
        steps = json.loads(Path(args.step_json).read_text())["steps"]
        return max(s["images_per_s"] for n, s in steps.items() if n.startswith("optimised"))
    return None


def measure(files, args, device) -> dict:
    """img/s and CPU s/img of every path; the GPU path's CPU cost is its loader side's (the trainer's
    own thread only launches the decode), measured on its own: a CUDA sync would count as busy CPU."""
    paths = {
        "pil": pil_path(files, args.img_size),
        "torchvision cpu": torchvision_cpu_path(files, args.img_size),
        "gpu loader side": loader_side_path(files),
    }
    if device.type == "cuda":
        paths["gpu"] = gpu_path(files, args.img_size, args.gpu_batch, device)
        paths["gpu"](0)  # nvJPEG and kernel start-up outside the timing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    rows = {}
    for name, one in paths.items():
        count, wall, cpu = run_for(args.seconds, one)
        rows[name] = {"images": count, "images_per_s": count / wall, "cpu_s_per_image": cpu / count}
    torch.set_num_threads(threads)
    if "gpu" in rows:
        rows["gpu"]["cpu_s_per_image"] = rows["gpu loader side"]["cpu_s_per_image"]
    return rows


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main(argv=None) -> int:
    args = parse(argv)
    device = device_from(args)
    folder = Path(args.folder)
    if args.make:
        make_jpegs(folder, args.make)
    files = list_jpegs(folder)
    kib = sum(f.stat().st_size for f in files[:256]) / min(len(files), 256) / 1024
    rows = measure(files, args, device)
    rate = step_rate(args)
    print(f"{len(files)} JPEGs under {folder} ({kib:.0f} KiB mean); crop {args.img_size}; CPU: {cpu_name()}")
    print(
        f"{'path':<18}{'img/s wall':>11}{'img/s per CPU s':>17}{'CPU ms/img':>12}{'cores per GPU':>15}"
        "   (CPU paths: one thread; on a busy host trust CPU time)"
    )
    for name, r in rows.items():
        r["cores_per_gpu"] = rate * r["cpu_s_per_image"] if rate else None
        cores = f"{r['cores_per_gpu']:.1f}" if rate else "-"
        print(
            f"{name:<18}{r['images_per_s']:>11.1f}{1 / r['cpu_s_per_image']:>17.1f}"
            f"{1e3 * r['cpu_s_per_image']:>12.2f}{cores:>15}"
        )
    if rate:
        print(f"cores per GPU: to feed {rate:.0f} img/s per GPU (the optimised step)")
    write_result(
        args.out,
        {
            "part": "input_pipeline",
            "device": str(device),
            "files": len(files),
            "mean_kib": kib,
            "img_size": args.img_size,
            "cpu": cpu_name(),
            "rows": rows,
            "step_img_s": rate,
            "argv": argv,
        },
    )
    return 0
