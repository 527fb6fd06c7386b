"""`hybrid-distill bench CONFIG`: images/s, time per phase, peak memory, GFLOP per image and (CUDA)
fraction of bf16 peak, for the plain and the optimised step interleaved in one process after
warm-up, medians over repeats, their ratio, and each of the optimised step's config choices
(bf16 teachers, bf16 student, compile: phases.Switches) switched off on its own.

    hybrid-distill bench configs/hybrid_vitb_mae_clip.yaml --batch 8 --steps 5 --device cpu \
        teachers.clip.weights=random teachers.mim.weights=random
"""

import importlib
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..cli_parser import Parser
from ..config import load_config, to_dict
from ..config_check import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_flags
from ..provenance import provenance
from ..runtime import pick_device
from ..validate import writable_file
from .flops import SDPA_CPU
from .phases import Bench, Switches, default_switches
from .stop import Stop

# `hybrid-distill bench MODE ...`: flag -> (module, what it measures)
MODES = {
    "--input-pipeline": ("input_pipeline", "JPEG decode + RandomResizedCrop + flip img/s per CPU core and on a GPU"),
    "--versus-distill": ("versus", "the Hybrid step against the Distill-CLIP step (paper appendix D: ~1.2x)"),
    "--fp8": ("fp8_check", "FP8 teachers against bf16: the targets' relative error and the speed ratio"),
    "--batch-sweep": ("sweep", "the training step at growing batches: img/s, peak memory, % of bf16 peak"),
    "--memory": ("memory", "ViT-L student and ViT-L CLIP + MAE teachers: peak memory per batch"),
    "--report": ("report", "one table from the JSON files the other modes wrote"),
}

# dense bf16 tensor-core peak, TFLOP/s, from the vendors' datasheets (without sparsity)
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def parse(argv):
    p = Parser(prog="hybrid-distill bench", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teachers.clip.weights=random")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 8 on CPU, 128 on CUDA)")
    p.add_argument("--steps", type=int, default=5, help="timed repeats of every step (medians are reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--data", action="store_true", help="real loader from the config's data (else synthetic uint8)")
    p.add_argument("--student", default=None, help="student timm name, e.g. vit_small_patch16_224")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="optimised step: bf16 teachers and bf16 student autocast (auto: bf16 on CUDA); plain is fp32",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the student and the teachers in the optimised step (auto: on CUDA only)",
    )
    p.add_argument("--no-ablation", action="store_true", help="skip the runs with one optimisation switched off")
    p.add_argument("--smoke", action="store_true", help="tiny models at 32 px: checks the code path in seconds")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after which no new step starts; the repeats done are reported (stops cleanly "
        "between steps, as SIGTERM does)",
    )
    p.add_argument("--out", default="runs/bench/bench.json", help="result JSON")
    return p.parse_intermixed_args(argv)


def check_args(args) -> None:
    # a deadline of 0, below 0 or NaN would stop before the first timed repeat, after the models were built
    check_flags(args, {"--batch": AT_LEAST_1, "--steps": AT_LEAST_1, "--warmup": AT_LEAST_0, "--deadline": POSITIVE})
    pick_device(args.device, "--device")
    writable_file("--out", Path(args.out))


def synthetic_batches(batch: int, size: int, device: torch.device):
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    images = images.pin_memory() if device.type == "cuda" else images
    while True:
        yield images


def loader_batches(cfg, batch: int):
    from ..data.build import build_dataset, build_loader

    dataset = build_dataset(cfg.data)
    loader, sampler = build_loader(cfg.data, dataset, batch, batch, cfg.seed)
    epoch = 0
    while True:
        sampler.set_epoch(epoch, 0)
        for images, *_ in loader:
            yield images
        epoch += 1


def variants(sw: Switches, ablation: bool) -> dict[str, Switches | None]:
    """plain, optimised, and with `ablation` each switch turned off on its own. When compiling, the
    other switches are ablated from the eager optimised step ('(eager)'): every compiled variant would
    cost a compilation of its own."""
    out = {"plain": None, "optimised": sw}
    eager = replace(sw, compile=False)
    suffix = " (eager)" if sw.compile else ""
    if ablation:
        if sw.compile:
            out["optimised eager"] = eager
        for name in eager.on():
            out[f"- {name}{suffix}"] = eager.without(name)
    if sw.bf16_teachers or sw.bf16_student:  # the optimised step in fp32 as well: the ratio in both precisions
        out[f"optimised fp32{suffix}"] = Switches()
    return out


def gflop_per_image(bench: Bench, sw: Switches | None, images: torch.Tensor) -> float:
    """Forward + backward FLOPs of one step (matmuls, convolutions, attention) per image; the optimised
    step's counted on its fp32 eager variant (the same work)."""
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU)
    with counter:
        bench.run(None if sw is None else Switches(), images)
    return counter.get_total_flops() / images.shape[0] / 1e9


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if all(w in name for w in k.split())), None)


def measure(
    bench: Bench,
    runs: dict,
    batches,
    warmup: int,
    steps: int,
    stop: Stop | None = None,
    on_repeat=None,
    phases: dict | None = None,
) -> dict[str, list[dict]]:
    """Every variant once per repeat, the order rotated each repeat; warm-up repeats dropped, the last
    one run under the profiler: its phases go to `phases` (variant -> seconds per phase). Stops
    between steps when `stop` says so (deadline, SIGTERM) with the repeats done; `on_repeat(records)`
    after each repeat (the partial result file)."""
    names, records = list(runs), {n: [] for n in runs}
    phases = {} if phases is None else phases
    stop = stop or Stop()
    for r in range(warmup + steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if stop():
                print(f"stopped ({stop.reason}): reporting the timed repeats done so far", file=sys.stderr, flush=True)
                return {n: v for n, v in records.items() if v}
            start = time.perf_counter()
            images = next(batches)  # with --data: the wait for the loader's workers (0 when overlapped)
            step_variant(bench, runs, name, images, time.perf_counter() - start, r, warmup, names, records, phases)
        kind = "warm-up" if r < warmup else "timed"
        print(f"repeat {r + 1}/{warmup + steps} done ({kind})", file=sys.stderr, flush=True)
        if on_repeat is not None:
            on_repeat(records)
    return {n: v for n, v in records.items() if v}


def step_variant(
    bench: Bench,
    runs: dict,
    name: str,
    images,
    data_s: float,
    r: int,
    warmup: int,
    names: list,
    records: dict,
    phases: dict,
) -> None:
    """One step of one variant, recorded after warm-up (the last warm-up profiled); an extra variant
    that fails is dropped."""
    start = time.perf_counter()
    try:
        times = {"data": data_s, **bench.step(runs[name], images, profile=r == warmup - 1)}
    except Exception as err:  # an extra variant (a compiled one, say) must not take the others down
        if name in ("plain", "optimised"):
            raise
        print(
            f"variant '{name}' failed and is dropped: {type(err).__name__}: {str(err)[:300]}",
            file=sys.stderr,
            flush=True,
        )
        names.remove(name)
        del records[name]
        return
    if r < warmup:  # the first calls compile: say how long they took
        print(f"  {name}: {time.perf_counter() - start:.1f} s (warm-up {r + 1})", file=sys.stderr, flush=True)
        if "phases" in times:
            phases[name] = times["phases"]
    else:
        records[name].append(times)


def write_partial(path: Path, records: dict, batch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"batch": batch, "partial": True, "step_records": records}))


def summarise(records: list[dict], batch: int, gflop: float | None, peak: float | None, phases: dict) -> dict:
    """records: {'data', 'step'[, 'peak_mib']} seconds per timed repeat; phases: one profiled step's."""
    totals = [t["data"] + t["step"] for t in records]
    step = statistics.median(totals)
    out = {
        "step_s": totals,
        "median_step_s": step,
        "images_per_s": batch / step,
        "phases_s": {"data": statistics.median(t["data"] for t in records), **phases},
        "peak_mib": max((t.get("peak_mib", 0.0) for t in records), default=0.0) or None,
        "gflop_per_image": gflop,
    }
    if gflop and peak:
        out["fraction_of_bf16_peak"] = gflop * batch / step / 1e3 / peak
    return out


def print_table(summary: dict, ratio: float, device_name: str) -> None:
    phases = list(dict.fromkeys(k for s in summary.values() for k in s["phases_s"]))
    head = f"{'step':<28}{'img/s':>8}{'ms/step':>10}" + "".join(f"{p:>{len(p) + 2}}" for p in phases)
    print(f"device: {device_name}; times in ms, medians\n{head}{'GFLOP/img':>11}{'peak MiB':>10}{'% bf16 peak':>13}")
    for name, s in summary.items():
        row = f"{name:<28}{s['images_per_s']:>8.2f}{1e3 * s['median_step_s']:>10.1f}"
        row += "".join(f"{1e3 * s['phases_s'].get(p, 0.0):>{len(p) + 2}.1f}" for p in phases)
        gf = f"{s['gflop_per_image']:.1f}" if s.get("gflop_per_image") else "-"
        mem = f"{s['peak_mib']:.0f}" if s.get("peak_mib") else "-"
        frac = f"{100 * s['fraction_of_bf16_peak']:.1f}" if s.get("fraction_of_bf16_peak") else "-"
        print(f"{row}{gf:>11}{mem:>10}{frac:>13}")
    print(f"ratio optimised / plain (images/s): {ratio:.2f}x")
    for name in (n for n in summary if n.startswith("optimised fp32")):
        fp32 = summary["plain"]["median_step_s"] / summary[name]["median_step_s"]
        print(f"ratio {name} / plain (images/s): {fp32:.2f}x")
    for name, s in summary.items():
        if name.startswith("- "):
            reference = "optimised eager" if name.endswith(" (eager)") else "optimised"
            if reference not in summary:
                continue
            gain = s["median_step_s"] / summary[reference]["median_step_s"]
            print(f"  {name[2:]:<26} speeds the {reference} step up {gain:.2f}x")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODES:  # the bench's other parts, each a module of its own
        module, _ = MODES[argv[0]]
        return importlib.import_module(f"hybrid_distill.bench.{module}").main(argv[1:])
    args = parse(argv)
    stop = Stop(args.deadline)  # the deadline counts from here: building and compiling take part of it
    overrides = list(args.overrides) + ([f"student.arch={args.student}"] if args.student else [])
    check_args(args)
    if args.smoke:
        from .harness import smoke_overrides

        overrides = smoke_overrides(load_config(args.config, overrides).teachers) + overrides
    cfg = load_config(args.config, overrides)
    device = pick_device(args.device, "--device")
    batch = args.batch or (128 if device.type == "cuda" else 8)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    sw = default_switches(bf16, use_compile)
    bench = Bench(cfg, device)
    batches = loader_batches(cfg, batch) if args.data else synthetic_batches(batch, cfg.data.img_size, device)
    runs = variants(sw, not args.no_ablation)
    sample = next(batches)[: min(batch, 2)]
    flops = {n: gflop_per_image(bench, runs[n], sample) for n in ("plain", "optimised")}
    for name in (n for n in runs if n.startswith("optimised fp32")):
        flops[name] = flops["optimised"]  # the same work in another precision
    partial = Path(args.out).with_suffix(".partial.json")  # the raw repeats so far, should the bench be killed
    phases, on_repeat = {}, lambda done: write_partial(partial, done, batch)
    with stop.watching():
        records = measure(bench, runs, batches, args.warmup, args.steps, stop, on_repeat, phases)
        for name in (n for n in records if n not in phases):  # no warm-up: one more step, profiled
            phases[name] = {} if stop() else bench.step(runs[name], next(batches), profile=True)["phases"]
    if not {"plain", "optimised"} <= set(records):
        print("hybrid-distill bench: no timed repeat of both the plain and the optimised step", file=sys.stderr)
        return 1
    peak = bf16_peak_tflops(device)
    summary = {n: summarise(r, batch, flops.get(n), peak, phases[n]) for n, r in records.items()}
    ratio = summary["plain"]["median_step_s"] / summary["optimised"]["median_step_s"]
    env = provenance()
    print_table(summary, ratio, env["device"])
    result = {
        "command": ["hybrid-distill", "bench", *(argv if argv is not None else [])],
        "batch": batch,
        "device": str(device),
        "switches": asdict(runs["optimised"]),
        "steps": summary,
        "ratio": ratio,
        "bf16_peak_tflops": peak,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prune_teacher_note": "masking.prune_teacher changes the MIM targets; the plain step ignores it"
        if cfg.masking.prune_teacher
        else None,
        "config": to_dict(cfg),
        "provenance": env,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return 0
