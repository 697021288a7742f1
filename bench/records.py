"""Recorded results under bench/results/: the machine, torch version, commit and date written next to
each result, and a new file per run (a recorded run is never overwritten)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
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


def new_record_base(name: str) -> str:
    """bench/results/<name>, or <name>_run2, _run3, ... when that is taken: a recorded run is never overwritten."""
    base, run = os.path.join(RESULTS_DIR, name), 2
    while any(os.path.exists(base + ext) for ext in (".json", ".md")):
        base, run = os.path.join(RESULTS_DIR, f"{name}_run{run}"), run + 1
    return base


def markdown_record(title: str, machine: dict, body: str) -> str:
    return f"# {title}\n\n" + "".join(f"- {key}: {value}\n" for key, value in machine.items()) + "\n" + body


def record_markdown(script: str, name: str, report: str) -> str:
    """Write ``report`` under bench/results/<name>_<date>_cpu.md with the machine description."""
    machine = machine_description(torch.device("cpu"))
    path = new_record_base(f"{name}_{machine['date'][:10]}_cpu") + ".md"
    with open(path, "w") as out:
        out.write(markdown_record(f"bench/{script}", machine, report))
    print("recorded", path)
    return path
