"""Step and epoch time, and peak memory, of a plain ensemble vs EDLCM (reference vs fused), side by side.

    python bench/step.py --quick                 # < 1 minute on 2 CPU cores
    python bench/step.py --record                # full run, written to bench/results/
    python bench/step.py --json out.json --configs resnet18 --device cuda

Every mode of a configuration trains its own copy of the same initial ensemble with SGD; steps of
the modes are interleaved round-robin and the median is reported, so the ratios compare like with
like on one machine in one run. A step is zero_grad + loss + backward + optimizer step:
- plain:     sum_m CE_m (the Base ensemble, eq 2)
- reference: EDLCM (eq 11) in plain PyTorch, edlcm_ext.reference
- fused:     EDLCM through edlcm_ext.HvpCurvatureLoss (fused BatchNorm and Conv2d double backward, fused statistics)
- every4:    HvpCurvatureLoss(every=4); one sample times 4 consecutive steps, divided by 4
- fraction25: HvpCurvatureLoss(batch_fraction=0.25)
- first_order: HvpCurvatureLoss(gradient="first_order"), the approximate mode with no double backward
  (its agreement with the exact gradient: bench/first_order.py)
- with --methods, every other training method of edlcm_ext.methods at its defaults (adp, gal, deg,
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
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from dataclasses import replace as dataclass_replace

import torch
import torch.nn.functional as F

import edlcm_ext
from edlcm_ext.devices import resolve_device
from edlcm_ext.ensemble import Ensemble
from edlcm_ext.methods import METHODS, build_method
from edlcm_ext.models import build_model
from edlcm_ext.reference import edlcm_terms

@dataclass(frozen=True)
class Mode:
    loss: str  # plain | reference | fused | first_order | method
    channels_last: bool = False
    amp: bool = False
    every: int = 1
    batch_fraction: float = 1.0
    method: str = ""  # with loss="method": a name from edlcm_ext.methods


BASE_MODES = {"plain": Mode("plain"), "reference": Mode("reference"), "fused": Mode("fused"),
              "every4": Mode("fused", every=4), "fraction25": Mode("fused", batch_fraction=0.25),
              "first_order": Mode("first_order")}
# Layout and precision variants a speed-minded user runs: the best plain one is the baseline.
LAYOUT_MODES = ("plain", "reference", "fused", "every4", "fraction25")
AMP_MODES = ("plain", "fused", "every4")
# base and edlcm are plain and fused above.
OTHER_METHODS = tuple(name for name in sorted(METHODS) if name not in ("base", "edlcm"))


def mode_table(amp: bool, methods: bool = False) -> dict[str, Mode]:
    modes = dict(BASE_MODES)
    for name in LAYOUT_MODES:
        modes[f"{name}_cl"] = dataclass_replace(BASE_MODES[name], channels_last=True)
    if methods:
        for name in OTHER_METHODS:
            modes[f"{name}_cl"] = Mode("method", channels_last=True, method=name)
    if amp:
        for name in AMP_MODES:
            modes[f"{name}_amp"] = dataclass_replace(BASE_MODES[name], amp=True)
            modes[f"{name}_cl_amp"] = dataclass_replace(BASE_MODES[name], amp=True, channels_last=True)
    return modes


MODES = mode_table(amp=False)
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass(frozen=True)
class Config:
    name: str
    arch: str
    members: int
    classes: int
    batch: int
    image: int = 32


CONFIGS = {
    "small_cnn": Config("small_cnn", "small_cnn", members=3, classes=10, batch=64),
    "resnet18": Config("resnet18", "resnet18", members=3, classes=100, batch=64),
    # Almost no arithmetic: a step's time is its host overhead (Python, dispatcher, autograd engine),
    # which is what bounds the GPU step at batch 64 (bench/results/step_2026-11-26_cuda_*).
    "overhead": Config("overhead", "small_cnn", members=3, classes=10, batch=2, image=16),
}
# --quick keeps both architectures but shrinks ResNet-18's batch to fit a minute on 2 CPU cores.
QUICK_CONFIGS = {**CONFIGS, "resnet18": Config("resnet18-b8", "resnet18", members=3, classes=100, batch=8)}


def memory_format(mode: Mode) -> torch.memory_format:
    return torch.channels_last if mode.channels_last else torch.contiguous_format


def make_ensemble(config: Config, device: torch.device, mode: Mode = BASE_MODES["plain"], seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [build_model(config.arch, config.classes).to(device, memory_format=memory_format(mode)).train() for _ in range(config.members)]


def make_batch(config: Config, device: torch.device, mode: Mode = BASE_MODES["plain"], seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(config.batch, 3, config.image, config.image, generator=generator)
    y = torch.randint(0, config.classes, (config.batch,), generator=generator)
    return x.to(device, memory_format=memory_format(mode)), y.to(device)


def make_step(mode: Mode, models: list[torch.nn.Module], foreach: bool | None = None):
    """A closure running one training step of ``mode`` on (x, y); ``foreach`` as torch.optim.SGD's
    (None: multi-tensor updates on CUDA, a loop over parameters on the CPU)."""
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4, foreach=foreach)
    regularizer = edlcm_ext.HvpCurvatureLoss(gradient="first_order" if mode.loss == "first_order" else "exact",
                                            every=mode.every, batch_fraction=mode.batch_fraction)

    method = build_method(mode.method) if mode.loss == "method" else None
    ensemble = Ensemble(models)

    def loss_of(x, y):
        if method is not None:
            return method.loss(ensemble, x, y)[0]
        if mode.loss == "plain":
            return sum(F.cross_entropy(m(x), y) for m in models)
        if mode.loss == "reference":  # the same loss as the regularizer's, in plain PyTorch
            r = regularizer
            terms = edlcm_terms(models, x, y, r.alpha, r.beta, r.h, r.reduction, r.max_ratio)
        else:
            terms = regularizer.terms(models, x, y)
        return terms.ece + terms.total

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mode.amp):
            loss = loss_of(x, y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def warmed_step(config: Config, device: torch.device, mode: Mode, foreach: bool | None = None):
    """(step, x, y) of a fresh ensemble, after one step: libraries initialized, optimizer state allocated."""
    x, y = make_batch(config, device, mode)
    step = make_step(mode, make_ensemble(config, device, mode), foreach=foreach)
    step(x, y)
    return step, x, y


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(config: Config, device: torch.device, modes: dict[str, Mode], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each mode, modes interleaved round-robin; a sample of an every=k
    mode times k consecutive steps (one regularized, k-1 not) and divides by k."""
    batches = {name: make_batch(config, device, mode) for name, mode in modes.items()}
    steps = {name: make_step(mode, make_ensemble(config, device, mode)) for name, mode in modes.items()}
    for name, mode in modes.items():
        for _ in range(warmup * mode.every):
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
    return {name: statistics.median(values) for name, values in samples.items()}


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
    command = [sys.executable, os.path.abspath(__file__), "--memory-probe", json.dumps(asdict(config)), json.dumps(asdict(mode))]
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


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
    }


def run(args) -> dict:
    device = resolve_device(args.device)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 2)
    modes = mode_table(args.amp, args.methods)
    if args.modes:
        modes = {name: modes[name] for name in args.modes.split(",")}
    report = {"machine": machine_description(device), "quick": args.quick, "results": []}
    for name in args.configs.split(","):
        config = configs[name]
        times = time_steps(config, device, modes, repeats, warmup)
        best_plain = min((name for name in times if modes[name].loss == "plain"), key=times.get)
        row = {"config": asdict(config), "step_seconds": times, "best_plain": best_plain,
               "over_best_plain": {name: t / times[best_plain] for name, t in times.items()},
               "fused_vs_reference": {suffix or "contiguous": times["reference" + suffix] / times["fused" + suffix]
                                      for suffix in ("", "_cl") if "reference" + suffix in times and "fused" + suffix in times}}
        if not args.no_memory:
            row["peak_mib"] = {name: peak_memory_mib(config, device, name, mode) for name, mode in modes.items()}
        if args.epoch_images:
            row["epoch_images"] = args.epoch_images
            row["epoch_seconds"] = {name: epoch_seconds(config, device, mode, args.epoch_images) for name, mode in modes.items()}
        report["results"].append(row)
        print(format_row(row), flush=True)
    return report


def format_row(row: dict) -> str:
    c, t = row["config"], row["step_seconds"]
    lines = [f"{c['name']}: {c['members']}x {c['arch']}, batch {c['batch']}, {c['image']}x{c['image']}x3, {c['classes']} classes",
             f"| mode | step (s) | x best plain ({row['best_plain']}) |" + (" peak (MiB) |" if "peak_mib" in row else "")
             + (f" epoch of {row['epoch_images']} images (s) |" if "epoch_seconds" in row else ""),
             "|---|---|---|" + ("---|" if "peak_mib" in row else "") + ("---|" if "epoch_seconds" in row else "")]
    for mode in t:
        line = f"| {mode} | {t[mode]:.4f} | {row['over_best_plain'][mode]:.2f} |"
        line += f" {row['peak_mib'][mode]:.0f} |" if "peak_mib" in row else ""
        line += f" {row['epoch_seconds'][mode]:.2f} |" if "epoch_seconds" in row else ""
        lines.append(line)
    lines += [f"fused vs reference ({layout}): {ratio:.2f}x faster" for layout, ratio in row["fused_vs_reference"].items()]
    return "\n".join(lines) + "\n"


def new_record_base(name: str) -> str:
    """bench/results/<name>, or <name>_run2, _run3, ... when that is taken: a recorded run is never overwritten."""
    base, run = os.path.join(RESULTS_DIR, name), 2
    while any(os.path.exists(base + ext) for ext in (".json", ".md")):
        base, run = os.path.join(RESULTS_DIR, f"{name}_run{run}"), run + 1
    return base


def markdown_record(title: str, machine: dict, body: str) -> str:
    return f"# {title}\n\n" + "".join(f"- {key}: {value}\n" for key, value in machine.items()) + "\n" + body


def record(report: dict) -> str:
    machine = report["machine"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    kind = "cuda" if "CPU" not in machine["device"] else "cpu"
    configs = "-".join(row["config"]["name"] for row in report["results"])
    base = new_record_base(f"step_{stamp}_{kind}_{configs}{'_quick' if report['quick'] else ''}")
    with open(base + ".json", "w") as out:
        json.dump(report, out, indent=2)
    with open(base + ".md", "w") as out:
        out.write(markdown_record(f"bench/step.py{' --quick' if report['quick'] else ''}", machine,
                                  "\n".join(format_row(row) for row in report["results"])))
    return base


def record_markdown(script: str, name: str, report: str) -> str:
    """Write ``report`` under bench/results/<name>_<date>_cpu.md with the machine description."""
    machine = machine_description(torch.device("cpu"))
    path = new_record_base(f"{name}_{machine['date'][:10]}_cpu") + ".md"
    with open(path, "w") as out:
        out.write(markdown_record(f"bench/{script}", machine, report))
    print("recorded", path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small repeats and ResNet-18 at batch 8: < 1 min on 2 CPU cores")
    parser.add_argument("--configs", default="small_cnn,resnet18", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode (ignored with --quick)")
    parser.add_argument("--epoch-images", type=int, default=0, help="also time one epoch of this many images per mode")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", help="write the full report to this JSON file")
    parser.add_argument("--record", action="store_true", help="write the report under bench/results/")
    parser.add_argument("--amp", action="store_true", help="also the bf16 autocast variants (_amp)")
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
    report = run(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    if args.record:
        print("recorded", record(report))


if __name__ == "__main__":
    main()
