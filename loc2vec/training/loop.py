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
from loc2vec.models.losses import (
    PatchReconstruction,
    ReconstructionObjective,
    TripletObjective,
    alike_compositions,
    channel_cells,
    composition_neighbours,
    decorrelation,
    disc_composition,
    mask_cells,
)
from loc2vec.training.checkpoint import load_checkpoint, save_checkpoint
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import DeviceSpec


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


class InitialWeights:
    """A copy of the backbone's seeded initial weights: ``pull`` moves every trained backbone weight ``lr *
    strength`` of its way back to where it started, ``lr`` its parameter group's current learning rate (the
    decoupled L2-SP penalty, applied after the optimizer's step as AdamW applies weight decay), so training
    keeps what the random features had unless the objectives pay for the change."""

    def __init__(self, model: Encoder, strength: float) -> None:
        self.strength = strength
        self.initial = {id(p): p.detach().clone() for p in model.backbone.parameters() if p.requires_grad}

    @torch.no_grad()
    def pull(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            shrink = min(1.0, group["lr"] * self.strength)
            for weight in group["params"]:
                if id(weight) in self.initial:
                    weight.lerp_(self.initial[id(weight)], shrink)


class StemFill:
    """The patch stem's response to a uniform fill of each channel, kept at its seeded value: ``restore`` puts
    each kernel's mean over its taps back after the optimizer's step, so the patterns around that mean train
    while the stem still sees how much of a patch each channel fills (``TrainConfig.keep_stem_fill``)."""

    def __init__(self, model: Encoder) -> None:
        self.weight = model.backbone.stem[0].weight
        self.fill = self.weight.detach().mean(dim=(2, 3), keepdim=True).clone()

    @torch.no_grad()
    def restore(self) -> None:
        self.weight.sub_(self.weight.mean(dim=(2, 3), keepdim=True)).add_(self.fill)


def _freeze_stem(model: Encoder) -> torch.nn.Module:
    """The encoder's patch stem, its weights no longer trained (its batch norm is kept in eval mode by the loop)."""
    stem = model.backbone.stem
    stem.requires_grad_(False)
    return stem


def _patch_reconstruction(model: Encoder, channels: int) -> tuple[PatchReconstruction, dict, Callable[[], None]]:
    """The patch decoder for the encoder's stem, the dict each forward pass leaves the stem's output in
    (``"stem"``), and what takes that hook off the encoder again (a trained model carries no hook)."""
    conv = model.backbone.stem[0]
    decoder = PatchReconstruction(conv.out_channels, channels, conv.kernel_size[0])
    seen: dict[str, torch.Tensor] = {}
    hook = model.backbone.stem.register_forward_hook(lambda _m, _inputs, output: seen.__setitem__("stem", output))
    return decoder, seen, hook.remove


def _average_gradients(modules: list[torch.nn.Module], world: int) -> None:
    """Average the gradients of modules DDP does not wrap (the auxiliary objectives' decoders) over the ranks,
    as DDP does for the encoder's, so every rank's decoders stay the same."""
    if world == 1:
        return
    for parameter in (p for m in modules for p in m.parameters() if p.grad is not None):
        dist.all_reduce(parameter.grad)
        parameter.grad /= world


def _composition_parts(representation: torch.Tensor, context_dim: int, target: str) -> list[torch.Tensor]:
    """What the composition term shapes (``TrainConfig.composition_on``): the place representation, its context
    part (the first ``context_dim`` columns), or both, each with a term of its own."""
    context = representation[:, :context_dim]
    return {"place": [representation], "context": [context], "both": [representation, context]}[target]


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
    frozen = _freeze_stem(model) if config.freeze_stem else None  # before DDP, which registers what trains
    # the seeded initial weights, taken before a checkpoint's weights are loaded (a resumed run pulls toward them too)
    initial = InitialWeights(model, config.init_pull) if config.init_pull > 0 else None
    fill = StemFill(model) if config.keep_stem_fill else None
    net: torch.nn.Module = model
    if world > 1:
        ids = [device.index] if device.kind == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    recon = None
    if config.recon_weight > 0:
        recon_dim = model.context_dim if config.recon_from == "context" else model.representation_dim
        recon = ReconstructionObjective(recon_dim, channels, config.recon_cells).to(device.device)
    patch, seen, unhook = None, {}, None
    if config.patch_recon_weight > 0:
        patch, seen, unhook = _patch_reconstruction(model, channels)
        patch = patch.to(device.device)
    decoders = [m for m in (recon, patch) if m is not None]
    with_representation = recon is not None or config.decorrelation_weight > 0 or config.composition_weight > 0
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
    history: list[EpochMetrics] = []
    best_val, best_epoch, bad_epochs, start_epoch = float("inf"), -1, 0, 0
    best_state = None
    resumed_from = None
    state = load_checkpoint(last_path)
    if state is not None:
        if state["config_digest"] != config.digest():
            raise ConfigError(f"checkpoint {last_path} belongs to another training config; use a new directory")
        if state.get("data_digest") != data_digest:
            raise ConfigError(
                f"checkpoint {last_path} was trained on other train/val anchors (another split); resuming it "
                "could leak test ground into training: use a new directory"
            )
        model.load_state_dict(state["model"])
        if recon is not None:
            recon.load_state_dict(state["reconstruction"])
        if patch is not None:
            patch.load_state_dict(state["patch_reconstruction"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [EpochMetrics(**h) for h in state["history"]]
        best_val, best_epoch, bad_epochs = state["best_val"], state["best_epoch"], state["bad_epochs"]
        best_state = state["best_state"]
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
                x = device.to_device(torch.cat([anchors, positives]).permute(0, 3, 1, 2))
                loc = locations.to(device.device)
                target = channel_cells(x, config.recon_cells) if recon is not None else None
                composition, alike = None, None
                if config.composition_weight > 0 or config.negative_composition_l1 is not None:
                    # of the crops before masking, as the reconstruction's target
                    composition = disc_composition(x, config.composition_radius_px)
                if config.negative_composition_l1 is not None:
                    alike = alike_compositions(composition, config.negative_composition_l1)
                if config.mask_ratio > 0:
                    x = mask_cells(x, config.recon_cells, config.mask_ratio)
                with device.autocast():
                    out = net(x, with_representation=True) if with_representation else net(x)
                emb, rep = out if with_representation else (out, None)
                loss = objective(emb.float(), labels_of[: len(x)], loc, config.r_neg_m, config.max_negative_m, alike)
                if recon is not None:
                    loss = loss + config.recon_weight * recon(rep[:, : recon.decoder.in_features], target)
                if config.decorrelation_weight > 0:
                    loss = loss + config.decorrelation_weight * decorrelation(rep)
                if config.composition_weight > 0:
                    for shaped in _composition_parts(rep, model.context_dim, config.composition_on):
                        loss = loss + config.composition_weight * composition_neighbours(
                            shaped, composition, config.temperature, config.composition_temperature
                        )
                if patch is not None:
                    loss = loss + config.patch_recon_weight * patch(seen["stem"], x)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                _average_gradients(decoders, world)
                scaler.step(optimizer)
                scaler.update()
                if initial is not None:
                    initial.pull(optimizer)
                if fill is not None:
                    fill.restore()
                scheduler.step()
                losses.append(float(loss.detach()))
                samples += len(x)
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
        history.append(metrics)
        if val_loss < best_val - 1e-4:
            best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        stopped = bad_epochs >= config.patience
        if rank == 0:
            save_checkpoint(
                {
                    "config_digest": config.digest(),
                    "data_digest": data_digest,
                    "config": config.to_dict(),
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "reconstruction": recon.state_dict() if recon is not None else None,
                    "patch_reconstruction": patch.state_dict() if patch is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": [asdict(h) for h in history],
                    "best_val": best_val,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "best_state": best_state,
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
    if best_state is not None:
        model.load_state_dict(best_state)
    if unhook is not None:
        unhook()
    model.eval()
    stopped_early = len(history) < config.epochs
    return TrainResult(model.cpu(), history, best_epoch, stopped_early, resumed_from)
