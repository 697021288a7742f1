"""Step and epoch time, and peak memory, of a plain ensemble vs EDLCM (reference vs fused), side by side.

    python bench/step.py --quick                 # < 1 minute on 2 CPU cores
    python bench/step.py --record                # full run, written to bench/results/
    python bench/step.py --json out.json --configs resnet18 --device cuda

Every mode of a configuration trains its own copy of the same initial ensemble with SGD; steps of
the modes are interleaved round-robin and the median is reported, so the ratios compare like with
like on one machine in one run. A step is zero_grad + loss + backward + optimizer step:
- plain:     sum_m CE_m (the Base ensemble, eq 2)
- reference: EDLCM (eq 11) in plain PyTorch, edlcm_ext.loss.reference
- fused:     EDLCM's exact step, HvpCurvatureLoss(every=1, max_pull=None) (fused BatchNorm and Conv2d double backward, fused statistics)
- every4, every8, every16: HvpCurvatureLoss(every=k, max_pull=None); one sample times k consecutive steps, divided by k
- bounded:   HvpCurvatureLoss(every=1, max_pull=0.1), the pull bound's separate CE backward
- every16_bounded: HvpCurvatureLoss's defaults (every=16, max_pull=1): the bound on one step in 16
- first_order: the experimental FirstOrderCurvatureLoss (edlcm_ext.loss.first_order), approximate with
  no double backward (its agreement with the exact gradient: bench/first_order.py)
- with --compiled, the compiled path (edlcm_ext.loss.compiled) in channels_last: plain_compiled_cl,
  compiled_cl (exact EDLCM), every{4,8,16}_compiled_cl (Inductor's kernels); on CUDA also plain_graphed_cl,
  graphed_cl, every{4,8,16}_graphed_cl (the same replayed as CUDA graphs, mode="reduce-overhead"). The
  first step of a mode (compilation included) is timed apart, and the epoch equivalent of 50k
  images adds it once.
- with --methods, every other training method of edlcm_ext.training.methods at its defaults (adp, gal, deg,
  pdd, edlcm_lr, edlcm_lg), in channels_last like the evidence runs: the cost column of their table
Each mode also runs in channels_last (suffix _cl: models and inputs), and with --amp under autocast
(suffix _amp: bf16 on CPU, bf16 on CUDA). Ratios are against the best plain configuration measured.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import torch
from harness import (
    ALL_MODES,
    CONFIGS,
    QUICK_CONFIGS,
    REFERENCE_OF,
    Config,
    Mode,
    make_batch,
    make_ensemble,
    make_step,
    memory_format,
    mode_table,
    warmed_step,
)
from records import machine_description, markdown_record, new_record_base

from edlcm_ext.devices import resolve_device

EPOCH_IMAGES = 50_000  # CIFAR's training set: the epoch equivalent of a step time


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    config: Config, device: torch.device, modes: dict[str, Mode], repeats: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per step of each mode, modes interleaved round-robin (a sample of an every=k
    mode times k consecutive steps, one regularized, k-1 not, and divides by k); and the seconds
    of each mode's first k steps (library set-up, and compilation for the compiled modes)."""
    batches = {name: make_batch(config, device, mode) for name, mode in modes.items()}
    steps = {name: make_step(mode, make_ensemble(config, device, mode)) for name, mode in modes.items()}
    first = {}
    for name, mode in modes.items():
        synchronize(device)
        start = time.perf_counter()
        for _ in range(mode.every):
            steps[name](*batches[name])
        synchronize(device)
        first[name] = time.perf_counter() - start
        for _ in range((warmup - 1) * mode.every):
            steps[name](*batches[name])
    samples = {name: [] for name in modes}
    for _ in range(repeats):
        for name, mode in modes.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(mode.every):
                steps[name](*batches[name])
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / mode.every)
    return {name: statistics.median(values) for name, values in samples.items()}, first


def peak_memory_mib(config: Config, device: torch.device, name: str, mode: Mode) -> float:
    """Peak memory a step adds on top of what is live before it (CUDA: the allocator's peak; CPU: the
    peak resident size of a fresh process, sampled during the step)."""
    if device.type == "cuda":
        step, x, y = warmed_step(config, device, mode)
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(x, y)
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    # CPU: torch has no allocator statistics, so measure the peak RSS of a fresh process.
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-probe",
        json.dumps(asdict(config)),
        json.dumps(asdict(mode)),
    ]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def memory_probe(config_json: str, mode_json: str) -> None:
    config, mode = Config(**json.loads(config_json)), Mode(**json.loads(mode_json))
    step, x, y = warmed_step(config, torch.device("cpu"), mode)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so RSS is what is live
    before = _current_rss_mib()
    peak, done = [before], threading.Event()

    def sample():  # RSS has no resettable peak counter: sample it while the step runs
        while not done.is_set():
            peak[0] = max(peak[0], _current_rss_mib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step(x, y)
    done.set()
    sampler.join()
    print(peak[0] - before)


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def epoch_seconds(config: Config, device: torch.device, mode: Mode, images: int) -> float:
    """Wall time of one epoch of ``images`` random images (a DataLoader as in training)."""
    generator = torch.Generator().manual_seed(2)
    dataset = torch.utils.data.TensorDataset(
        torch.rand(images, 3, config.image, config.image, generator=generator),
        torch.randint(0, config.classes, (images,), generator=generator),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch, shuffle=True, drop_last=True)
    step = make_step(mode, make_ensemble(config, device, mode))
    synchronize(device)
    start = time.perf_counter()
    for x, y in loader:
        step(x.to(device, memory_format=memory_format(mode), non_blocking=True), y.to(device, non_blocking=True))
    synchronize(device)
    return time.perf_counter() - start


def run(args) -> dict:
    device = resolve_device(args.device)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 2)
    modes = mode_table(args.amp, args.methods, args.compiled, graphed=args.compiled and device.type == "cuda")
    if args.modes:
        modes = {name: ALL_MODES[name] for name in args.modes.split(",")}
    report = {"machine": machine_description(device), "quick": args.quick, "results": []}
    for name in args.configs.split(","):
        config = configs[name]
        times, first = time_steps(config, device, modes, repeats, warmup)
        best_plain = min((name for name in times if modes[name].loss == "plain"), key=times.get)
        steps_per_epoch = EPOCH_IMAGES // config.batch
        row = {
            "config": asdict(config),
            "step_seconds": times,
            "first_step_seconds": first,
            # one 50k-image epoch: its steps, plus the one-off start (compilation) of each mode
            "epoch_equivalent_seconds": {
                name: steps_per_epoch * t + max(0.0, first[name] - modes[name].every * t) for name, t in times.items()
            },
            "best_plain": best_plain,
            "over_best_plain": {name: t / times[best_plain] for name, t in times.items()},
            "over_reference": {
                name: times[reference] / times[name]
                for name, reference in REFERENCE_OF.items()
                if name in times and reference in times
            },
        }
        if not args.no_memory:
            row["peak_mib"] = {name: peak_memory_mib(config, device, name, mode) for name, mode in modes.items()}
        if args.epoch_images:
            row["epoch_images"] = args.epoch_images
            row["epoch_seconds"] = {
                name: epoch_seconds(config, device, mode, args.epoch_images) for name, mode in modes.items()
            }
        report["results"].append(row)
        print(format_row(row), flush=True)
    return report


def format_row(row: dict) -> str:
    c, t = row["config"], row["step_seconds"]
    lines = [
        f"{c['name']}: {c['members']}x {c['arch']}, batch {c['batch']}, {c['image']}x{c['image']}x3, {c['classes']} classes",
        f"| mode | step (s) | x best plain ({row['best_plain']}) | first step (s) | {EPOCH_IMAGES} images (s) |"
        + (" peak (MiB) |" if "peak_mib" in row else "")
        + (f" epoch of {row['epoch_images']} images (s) |" if "epoch_seconds" in row else ""),
        "|---|---|---|---|---|" + ("---|" if "peak_mib" in row else "") + ("---|" if "epoch_seconds" in row else ""),
    ]
    for mode in t:
        line = (
            f"| {mode} | {t[mode]:.4f} | {row['over_best_plain'][mode]:.2f} | {row['first_step_seconds'][mode]:.2f} |"
            f" {row['epoch_equivalent_seconds'][mode]:.1f} |"
        )
        line += f" {row['peak_mib'][mode]:.0f} |" if "peak_mib" in row else ""
        line += f" {row['epoch_seconds'][mode]:.2f} |" if "epoch_seconds" in row else ""
        lines.append(line)
    lines += [f"{name} vs the reference: {ratio:.2f}x faster" for name, ratio in row["over_reference"].items()]
    return "\n".join(lines) + "\n"


def record(report: dict) -> str:
    machine = report["machine"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    kind = "cuda" if "CPU" not in machine["device"] else "cpu"
    configs = "-".join(row["config"]["name"] for row in report["results"])
    base = new_record_base(f"step_{stamp}_{kind}_{configs}{'_quick' if report['quick'] else ''}")
    with open(base + ".json", "w") as out:
        json.dump(report, out, indent=2)
    with open(base + ".md", "w") as out:
        out.write(
            markdown_record(
                f"bench/step.py{' --quick' if report['quick'] else ''}",
                machine,
                "\n".join(format_row(row) for row in report["results"]),
            )
        )
    return base


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="small repeats and ResNet-18 at batch 8: < 1 min on 2 CPU cores"
    )
    parser.add_argument("--configs", default="small_cnn,resnet18", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode (ignored with --quick)")
    parser.add_argument("--epoch-images", type=int, default=0, help="also time one epoch of this many images per mode")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", help="write the full report to this JSON file")
    parser.add_argument("--record", action="store_true", help="write the report under bench/results/")
    parser.add_argument("--amp", action="store_true", help="also the bf16 autocast variants (_amp)")
    parser.add_argument("--compiled", action="store_true", help="also the compiled modes (edlcm_ext.loss.compiled)")
    parser.add_argument("--methods", action="store_true", help="also the other training methods (adp, gal, ...)")
    parser.add_argument("--modes", help="comma-separated subset of the modes (default: all)")
    parser.add_argument("--memory-probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        parser.error(f"--configs: unknown {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    if args.modes:
        unknown_modes = set(args.modes.split(",")) - set(ALL_MODES)
        if unknown_modes:
            parser.error(f"--modes: unknown {sorted(unknown_modes)}")
    report = run(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    if args.record:
        print("recorded", record(report))


if __name__ == "__main__":
    main()
