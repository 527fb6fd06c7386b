"""`hybrid-distill bench --report DIR`: one summary of the JSON files the bench's parts wrote to DIR
(scripts/gpu_check.sh names them); a part whose file is missing is said to be missing."""

import argparse
import json
from pathlib import Path

FILES = {
    "bench_eager": "bench_eager.json",
    "bench_compiled": "bench_compiled.json",
    "sweep": "sweep.json",
    "fp8": "fp8.json",
    "input": "input.json",
    "memory": "memory.json",
    "versus": "versus.json",
}


def load(folder: Path) -> dict:
    out = {}
    for key, name in FILES.items():
        path = folder / name
        out[key] = json.loads(path.read_text()) if path.is_file() else None
    return out


def pct(x) -> str:
    return f"{100 * x:.1f}%" if x else "-"


def bench_lines(name: str, r: dict) -> list[str]:
    steps, plain = r["steps"], r["steps"]["plain"]["median_step_s"]
    lines = [f"[{name}] batch {r['batch']}, {r['provenance']['device']}: img/s, x plain, % of bf16 peak, peak MiB"]
    for n, s in steps.items():
        if n.startswith("- "):
            continue
        lines.append(
            f"  {n:<30}{s['images_per_s']:>9.0f}{plain / s['median_step_s']:>7.2f}x"
            f"{pct(s.get('fraction_of_bf16_peak')):>8}{(s.get('peak_mib') or 0):>8.0f}"
        )
    for n, s in steps.items():
        if n.startswith("- "):
            ref = "optimised eager" if n.endswith("(eager)") and "optimised eager" in steps else "optimised"
            lines.append(
                f"  {n[2:]:<36} off on its own: step time x{s['median_step_s'] / steps[ref]['median_step_s']:.2f}"
            )
    return lines


def best_step(results: dict) -> float | None:
    rates = [
        s["images_per_s"]
        for k in ("bench_eager", "bench_compiled")
        if results[k]
        for n, s in results[k]["steps"].items()
        if n.startswith("optimised") and "fp32" not in n
    ]
    return max(rates) if rates else None


def sweep_lines(name: str, r: dict) -> list[str]:
    lines = [f"[{name}] {r['device']}, {r['gflop_per_image']:.1f} GFLOP/img: batch, img/s, peak GiB, % bf16 peak"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"  {row['batch']:>6}  {row['error']}")
        else:
            lines.append(
                f"  {row['batch']:>6}{row['images_per_s']:>9.0f}{(row['peak_gib'] or 0):>8.1f}"
                f"{pct(row.get('fraction_of_bf16_peak')):>8}"
            )
    return lines + [f"  largest batch that ran: {r['largest_batch']}"]


def fp8_lines(r: dict) -> list[str]:
    lines = [f"[fp8] batch {r['batch']}: relative error fp8 vs bf16 (bf16 vs fp32)"]
    for name, e in r["errors"].items():
        lines.append(f"  {name:<24}{e['fp8_vs_bf16']:.4f} ({e['bf16_vs_fp32']:.4f})")
    if r.get("kept_overlap") is not None:
        lines.append(f"  kept tokens shared with bf16's picker: {100 * r['kept_overlap']:.1f}%")
    return lines + ["  speed bf16 / fp8: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items())]


def input_lines(r: dict, rate: float | None) -> list[str]:
    lines = [
        f"[input] {r['files']} JPEGs ({r['mean_kib']:.0f} KiB), CPU {r['cpu']}: img/s, CPU ms/img, "
        f"cores per GPU at {rate or 0:.0f} img/s"
    ]
    for name, row in r["rows"].items():
        cores = f"{rate * row['cpu_s_per_image']:.1f}" if rate else "-"
        lines.append(f"  {name:<16}{row['images_per_s']:>9.0f}{1e3 * row['cpu_s_per_image']:>8.2f}{cores:>7}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hybrid-distill bench --report", description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    args = p.parse_args(argv)
    results, lines = load(Path(args.folder)), []
    for key in ("bench_eager", "bench_compiled"):
        lines += bench_lines(key, results[key]) if results[key] else [f"[{key}] missing"]
    for key in ("sweep", "memory"):
        lines += sweep_lines(key, results[key]) if results[key] else [f"[{key}] missing"]
    lines += fp8_lines(results["fp8"]) if results["fp8"] else ["[fp8] missing"]
    lines += input_lines(results["input"], best_step(results)) if results["input"] else ["[input] missing"]
    v = results["versus"]
    lines.append(
        f"[versus] Hybrid / Distill-CLIP step time {v['hybrid_over_distill']:.2f}x (paper: ~1.2x), batch {v['batch']}"
        if v
        else "[versus] missing"
    )
    print("\n".join(lines))
    return 0
