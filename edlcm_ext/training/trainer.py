"""The trainer: glue between data, models, a training method, checkpoints and logs.

Training follows PDD's code, which EDLCM follows: SGD (lr 0.02, momentum 0.9, weight decay 5e-4),
batch 64, cosine schedule to 1e-4 over the epochs, random crop + flip for natural images.
Under ``torchrun --nproc_per_node=N`` each process trains on its DistributedSampler shard and the
gradients are averaged across processes after every backward (what DistributedDataParallel does;
done explicitly because the regularizers run several forward and input-gradient passes per step,
which DDP's one-forward-per-backward hooks do not expect). BatchNorm running statistics are
averaged across processes at the end of every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from ..devices import resolve_device
from ..models.ensemble import Ensemble
from .checkpoint import FORMAT_VERSION, atomic_save, build_ensemble, read_checkpoint, removed_options_note
from .config import TrainConfig
from .data import fixed_subset, load_dataset
from .methods import build_method

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/Inf loss; the last good checkpoint is kept."""


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


@torch.no_grad()
def clean_accuracy(ensemble: Ensemble, loader: DataLoader, device: torch.device) -> float:
    ensemble.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (ensemble.predict(x) == y).sum().item()
        total += y.numel()
    return correct / max(1, total)


# Gradients are averaged in buckets of at most this many bytes, as DistributedDataParallel's default
# bucket_cap_mb: a ResNet-18 ensemble makes a handful of collectives per step, not one per tensor.
BUCKET_BYTES = 25 * 2**20


def _buckets(tensors: list[torch.Tensor], cap: int):
    """Consecutive runs of tensors of one dtype and device, each at most ``cap`` bytes (or one tensor)."""
    bucket, size = [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (size + nbytes > cap or (tensor.dtype, tensor.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


def average_across_processes(tensors, world: int, cap: int = BUCKET_BYTES) -> None:
    """Replace each tensor by its mean over the processes: one all_reduce per bucket of flattened tensors."""
    for bucket in _buckets(list(tensors), cap):
        flat = torch.cat([tensor.reshape(-1) for tensor in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for tensor in bucket:  # copy_ writes back in each tensor's own layout (channels_last stays so)
            tensor.copy_(flat[offset : offset + tensor.numel()].view(tensor.shape))
            offset += tensor.numel()


class _StepLog:
    """Step values summed on the device and read (a host sync) only by ``means`` and
    ``first_non_finite_step``; tracks the first step whose loss was not finite."""

    def __init__(self, device: torch.device) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_non_finite = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, step: int, loss: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        loss = loss.detach()
        self.first_non_finite = torch.where(
            (self.first_non_finite < 0) & ~torch.isfinite(loss), step, self.first_non_finite
        )
        for key, value in {"loss": loss, **logs}.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def first_non_finite_step(self, distributed: bool) -> int:
        flag = self.first_non_finite.clone()
        if distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)

    def means(self) -> dict[str, float]:
        return {key: float(total) / self.counts[key] for key, total in self.sums.items()}


@dataclass
class TrainResult:
    ensemble: Ensemble
    history: list[dict]  # one log record per epoch (on the main process; empty on the others)


def train(config: TrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train (or resume) an ensemble, checkpointing every epoch in ``config.out_dir``. ``stop_after``:
    return once that many epochs of the config.epochs schedule are done (a later resume goes on from
    there, as if never stopped), so a driver can record each finished epoch. Under torchrun,
    the process group is set up here unless the caller did, and then also torn down here: a gloo
    group left to the interpreter's exit can abort the process (SIGABRT)."""
    rank, local_rank, world = _distributed()
    device = resolve_device(config.device, local_rank)
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        result = _train(config, resume, rank, world, device, stop_after)
        if owns_group:
            dist.barrier()  # every process is done with the group before any tears it down
        return result
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, resume: bool, rank: int, world: int, device: torch.device, stop_after: int | None
) -> TrainResult:
    distributed = world > 1
    main_process = rank == 0
    os.makedirs(config.out_dir, exist_ok=True)
    checkpoint_path = os.path.join(config.out_dir, CHECKPOINT_NAME)
    if os.path.exists(checkpoint_path) and not resume:
        raise FileExistsError(f"{checkpoint_path} exists: pass --resume to continue it, or choose another --out-dir")

    train_set, info = load_dataset(config.dataset, config.data_dir, train=True, download=config.download)
    test_set, _ = load_dataset(config.dataset, config.data_dir, train=False, download=config.download)
    train_set = fixed_subset(train_set, config.train_subset)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers, drop_last=True
    )
    test_loader = DataLoader(test_set, batch_size=256, num_workers=config.workers)

    checkpoint = read_checkpoint(checkpoint_path, device) if resume and os.path.exists(checkpoint_path) else None
    if checkpoint is not None and (note := removed_options_note(checkpoint_path, checkpoint)):
        raise ValueError(f"--resume: {note}; it cannot go on as it was trained. Evaluate it, or start a new run")
    if checkpoint is not None:  # options the run was started with (e.g. its L_r convention) stay, unless overridden now
        config = dataclasses.replace(
            config, method_options={**checkpoint["config"].get("method_options", {}), **config.method_options}
        )
    torch.manual_seed(config.seed)  # the same initial weights in every process
    layout = torch.channels_last if config.channels_last else torch.preserve_format
    ensemble = build_ensemble(config, info).to(device, memory_format=layout)
    method = build_method(config.method, **config.method_options)
    if config.compile:
        method.use_compiled()
    config = dataclasses.replace(config, method_options={**method.recorded_options(), **config.method_options})
    parameters = list(ensemble.parameters())
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)
    start_epoch, history = 0, []
    if checkpoint is not None:
        ensemble.load_state_dict(checkpoint["ensemble"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for parameter, state in optimizer.state.items():  # momentum in its parameter's layout
            state.update(
                {
                    k: torch.empty_like(parameter).copy_(v)
                    for k, v in state.items()
                    if torch.is_tensor(v) and v.shape == parameter.shape
                }
            )
        scheduler.load_state_dict(checkpoint["scheduler"])
        method.load_state_dict(checkpoint.get("method_state", {}))
        start_epoch, history = checkpoint["epoch"] + 1, checkpoint["history"]
    if main_process:
        with open(os.path.join(config.out_dir, "config.json"), "w") as out:
            json.dump(dataclasses.asdict(config), out, indent=2)

    for epoch in range(start_epoch, min(config.epochs, stop_after or config.epochs)):
        # Per-epoch seeds make an interrupted and resumed run draw the same augmentations and masks.
        torch.manual_seed(config.seed * 1_000_003 + epoch * 1009 + rank)
        sampler.set_epoch(epoch)
        method.set_progress(epoch, config.epochs)
        ensemble.train()
        started, step_log = time.perf_counter(), _StepLog(device)
        bar = tqdm(
            loader,
            desc=f"{config.method} epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and main_process),
            leave=False,
        )
        for step, (x, y) in enumerate(bar, 1):
            x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
            loss, logs = method.loss(ensemble, x, y)
            step_log.add(step, loss, logs)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if distributed:
                average_across_processes([p.grad for p in parameters if p.grad is not None], world)
            optimizer.step()
            if step % config.log_every == 0 or step == len(loader):
                bad_step = step_log.first_non_finite_step(distributed)
                if bad_step >= 0:
                    raise NonFiniteLossError(
                        f"loss became non-finite at epoch {epoch + 1}, step {bad_step}; stopped. Last good checkpoint: "
                        f"{checkpoint_path if os.path.exists(checkpoint_path) else 'none yet'}. {method.divergence_hint()}".strip()
                    )
                bar.set_postfix(loss=f"{step_log.means()['loss']:.4f}")
        scheduler.step()
        if distributed:
            average_across_processes([b for b in ensemble.buffers() if b.is_floating_point()], world)
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            **step_log.means(),
        }
        if main_process:
            # The test pass, timed apart from "seconds": what an epoch costs besides training.
            tested = time.perf_counter()
            record["test_accuracy"] = clean_accuracy(ensemble, test_loader, device)
            record["test_seconds"] = time.perf_counter() - tested
            history.append(record)
            atomic_save(
                {
                    "format": FORMAT_VERSION,
                    "epoch": epoch,
                    "ensemble": ensemble.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "method_state": method.state_dict(),
                    "config": dataclasses.asdict(config),
                    "info": dataclasses.asdict(info),
                    "history": history,
                },
                checkpoint_path,
            )
            with open(os.path.join(config.out_dir, LOG_NAME), "a") as log:
                log.write(json.dumps(record) + "\n")
            if config.progress:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if distributed:
            dist.barrier()
    return TrainResult(ensemble, history)
