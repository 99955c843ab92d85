"""The triplet training loop: seeded, checkpointed every epoch, resumable, early-stopped on validation.

Runs the same on CPU and CUDA (see ``device.py``) and under DDP (``ddp.py``): with a process group,
rank r trains on batches r, r+W, ... of each epoch and rank 0 writes checkpoints.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from loc2vec.data.crops import CropGeometry
from loc2vec.data.triplets import TripletBatches, fixed_triplets
from loc2vec.errors import ConfigError
from loc2vec.models.encoders import Encoder, build_encoder
from loc2vec.models.losses import TripletObjective
from loc2vec.training.checkpoint import load_checkpoint, save_checkpoint
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import DeviceSpec
from loc2vec.training.objectives import StepBatch, StepCorrections, StepObjectives, freeze_stem


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    val_triplet_accuracy: float
    seconds: float
    samples_per_s: float
    data_wait_share: float
    lr: float


@dataclass
class TrainResult:
    model: Encoder
    history: list[EpochMetrics]
    best_epoch: int
    stopped_early: bool
    resumed_from_epoch: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Progress:
    """What a run has learnt of itself so far: the epochs' metrics and the early stopping's state (the best
    validation loss, its epoch and weights, the epochs since), as the checkpoint keeps it."""

    history: list[EpochMetrics] = field(default_factory=list)
    best_val: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict | None = None

    def record(self, metrics: EpochMetrics, model: torch.nn.Module, patience: int) -> bool:
        """Add an epoch; keep the model's weights when its validation loss is the best by more than 1e-4. True
        when ``patience`` epochs in a row have not been."""
        self.history.append(metrics)
        if metrics.val_loss < self.best_val - 1e-4:
            self.best_val, self.best_epoch, self.bad_epochs = metrics.val_loss, metrics.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= patience

    def state_dict(self) -> dict:
        return {
            "history": [asdict(h) for h in self.history],
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        history = [EpochMetrics(**h) for h in state["history"]]
        return cls(history, state["best_val"], state["best_epoch"], state["bad_epochs"], state["best_state"])


def _check_resumable(state: dict, path: Path, config: TrainConfig, data_digest: str) -> None:
    """Refuse the checkpoint ``state`` read from ``path`` when another config or other anchors trained it."""
    if state["config_digest"] != config.digest():
        raise ConfigError(f"checkpoint {path} belongs to another training config; use a new directory")
    if state.get("data_digest") != data_digest:
        raise ConfigError(
            f"checkpoint {path} was trained on other train/val anchors (another split); resuming it "
            "could leak test ground into training: use a new directory"
        )


class SimulatedCrash(RuntimeError):
    """Raised by ``crash_after_epoch`` in tests to stand for a killed process."""


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def evaluate_triplets(
    model: torch.nn.Module, device: DeviceSpec, triplets, margin: float, batch: int = 128
) -> tuple[float, float]:
    """Margin triplet loss and accuracy (d(a,p) < d(a,n)) on explicit triplets."""
    model.eval()
    losses, hits = [], []
    a_all, p_all, n_all = triplets
    for start in range(0, len(a_all), batch):
        parts = [torch.from_numpy(x[start : start + batch]).permute(0, 3, 1, 2) for x in (a_all, p_all, n_all)]
        with device.autocast():
            ea, ep, en = (model(device.to_device(x)) for x in parts)
        d_ap = (ea - ep).norm(dim=1)
        d_an = (ea - en).norm(dim=1)
        losses.append(torch.relu(d_ap - d_an + margin).cpu())
        hits.append((d_ap < d_an).float().cpu())
    model.train()
    return float(torch.cat(losses).mean()), float(torch.cat(hits).mean())


def anchors_digest(train_xy: np.ndarray, val_xy: np.ndarray) -> str:
    """Identity of the training data: a checkpoint resumes only on the anchors it was trained on."""
    digest = hashlib.sha256()
    for xy in (train_xy, val_xy):
        digest.update(np.ascontiguousarray(xy, dtype=np.float64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def train(
    config: TrainConfig,
    reader: CropGeometry,
    train_xy: np.ndarray,
    val_xy: np.ndarray,
    device: DeviceSpec,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    crash_after_epoch: int | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train an encoder; resume from ``checkpoint_dir/last.pt`` when it holds this config's run
    (``on_resume`` is called with the first epoch still to train)."""
    if len(val_xy) < 2:
        raise ConfigError("need validation anchors for early stopping; got fewer than 2")
    spec = config.triplet_spec()
    val_set = fixed_triplets(
        reader, val_xy, spec, config.val_triplets, config.seed, pool_xy=np.concatenate([val_xy, train_xy])
    )

    def batches(epoch: int, rank: int, world: int) -> torch.utils.data.IterableDataset:
        return TripletBatches(
            reader, train_xy, spec, config.seed, epoch, config.steps_per_epoch, rank=rank, world=world
        )

    return fit(
        config,
        reader.channels,
        batches,
        val_set,
        anchors_digest(train_xy, val_xy),
        device,
        checkpoint_dir,
        on_epoch=on_epoch,
        crash_after_epoch=crash_after_epoch,
        on_resume=on_resume,
    )


def _average_gradients(modules: list[torch.nn.Module], world: int) -> None:
    """Average the gradients of modules DDP does not wrap (the auxiliary objectives' decoders) over the ranks,
    as DDP does for the encoder's, so every rank's decoders stay the same."""
    if world == 1:
        return
    for parameter in (p for m in modules for p in m.parameters() if p.grad is not None):
        dist.all_reduce(parameter.grad)
        parameter.grad /= world


def parameter_groups(model: Encoder, decoders: list[torch.nn.Module], config: TrainConfig) -> list[dict]:
    """What the optimizer trains, with each group's peak learning rate: one group (the encoder and the
    auxiliary objectives' ``decoders``), or the rest and the patch stem at ``stem_lr_scale`` of it
    (parameters a frozen stem holds are left out)."""
    stem = {id(p) for p in model.backbone.stem.parameters()} if config.stem_lr_scale != 1 else set()
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in stem]
    rest += [p for decoder in decoders for p in decoder.parameters()]
    groups = [{"params": rest, "lr": config.lr}]
    slow = [p for p in model.parameters() if p.requires_grad and id(p) in stem]
    if slow:
        groups.append({"params": slow, "lr": config.lr * config.stem_lr_scale})
    return groups


EpochBatches = Callable[[int, int, int], torch.utils.data.IterableDataset]  # (epoch, rank, world) -> the batches


def fit(
    config: TrainConfig,
    channels: int,
    batches: EpochBatches,
    val_set: tuple[np.ndarray, np.ndarray, np.ndarray],
    data_digest: str,
    device: DeviceSpec,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    crash_after_epoch: int | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> TrainResult:
    """The loop under ``train``: ``batches(epoch, rank, world)`` yields (anchors, positives, locations) batches,
    ``val_set`` holds the fixed validation triplets and ``data_digest`` names the data a checkpoint may resume on."""
    rank, world = _rank_world()
    torch.manual_seed(config.seed)
    model = build_encoder(config.encoder, config.embedding_dim, channels, config.weights_path)
    model = model.to(device.device)
    if device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = freeze_stem(model) if config.freeze_stem else None  # before DDP, which registers what trains
    # from the seeded initial weights, before a checkpoint's weights are loaded (a resumed run keeps the same targets)
    corrections = StepCorrections(config, model)
    net: torch.nn.Module = model
    if world > 1:
        ids = [device.index] if device.kind == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    objectives = StepObjectives(config, model, channels, device.device)
    decoders = objectives.decoders
    groups = parameter_groups(model, decoders, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.steps_per_epoch % world:
        raise ConfigError(f"steps_per_epoch ({config.steps_per_epoch}) must be a multiple of the world size {world}")
    local_steps = config.steps_per_epoch // world
    total_steps = config.epochs * local_steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=0.15
    )
    scaler = device.grad_scaler()
    objective = TripletObjective(config.loss, config.margin, config.mining, config.temperature)
    ckpt_dir = Path(checkpoint_dir)
    last_path = ckpt_dir / "last.pt"
    progress, start_epoch, resumed_from = Progress(), 0, None
    state = load_checkpoint(last_path)
    if state is not None:
        _check_resumable(state, last_path, config, data_digest)
        model.load_state_dict(state["model"])
        objectives.load_state_dict(state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = Progress.from_state(state)
        start_epoch = resumed_from = state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])
        if state.get("stopped"):
            start_epoch = config.epochs
        if on_resume is not None and rank == 0:
            on_resume(resumed_from)

    labels_of = torch.arange(config.batch_size).repeat(2).to(device.device)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        if frozen is not None:
            frozen.eval()  # its batch norm keeps its initial statistics (evaluate_triplets sets train mode)
        data = batches(epoch, rank, world)
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=config.num_workers, pin_memory=device.pin_memory
        )
        wait, losses, samples = 0.0, [], 0
        iterator = iter(loader)
        # the next batch is cut on a helper thread while this step computes (numpy/torch release the GIL);
        # the pool is shut down however the epoch ends (an interrupt must not leave a thread that keeps
        # the process from exiting)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") as prefetch:
            pending = prefetch.submit(next, iterator)
            for i in range(local_steps):
                t0 = time.perf_counter()
                anchors, positives, locations = pending.result()
                wait += time.perf_counter() - t0
                if i + 1 < local_steps:
                    pending = prefetch.submit(next, iterator)
                batch = StepBatch.of(device.to_device(torch.cat([anchors, positives]).permute(0, 3, 1, 2)), config)
                loc = locations.to(device.device)
                with device.autocast():
                    out = net(batch.x, with_representation=True) if objectives.needs_representation else net(batch.x)
                emb, rep = out if objectives.needs_representation else (out, None)
                labels = labels_of[: len(batch.x)]
                metric = objective(emb.float(), labels, loc, config.r_neg_m, config.max_negative_m, batch.alike)
                loss = objectives.loss(metric, batch, rep)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                _average_gradients(decoders, world)
                scaler.step(optimizer)
                scaler.update()
                corrections.after_step(optimizer)
                scheduler.step()
                losses.append(float(loss.detach()))
                samples += len(batch.x)
        val_loss, val_acc = evaluate_triplets(model, device, val_set, config.margin)
        seconds = time.perf_counter() - started
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            val_loss=val_loss,
            val_triplet_accuracy=val_acc,
            seconds=seconds,
            samples_per_s=samples / seconds,
            data_wait_share=wait / seconds,
            lr=float(scheduler.get_last_lr()[0]),
        )
        stopped = progress.record(metrics, model, config.patience)
        if rank == 0:
            save_checkpoint(
                {
                    "config_digest": config.digest(),
                    "data_digest": data_digest,
                    "config": config.to_dict(),
                    "epoch": epoch,
                    "model": model.state_dict(),
                    **objectives.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    **progress.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "stopped": stopped,
                },
                last_path,
            )
        if on_epoch is not None and rank == 0:
            on_epoch(metrics)
        if crash_after_epoch is not None and epoch == crash_after_epoch:
            raise SimulatedCrash(f"simulated crash after epoch {epoch}")
        if stopped:
            break
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    objectives.close()
    model.eval()
    stopped_early = len(progress.history) < config.epochs
    return TrainResult(model.cpu(), progress.history, progress.best_epoch, stopped_early, resumed_from)
