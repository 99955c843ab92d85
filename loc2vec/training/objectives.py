"""What a training step adds to the metric loss, and what it corrects after the optimizer's step.

Each auxiliary loss term of ``TrainConfig`` (reconstruction, decorrelation, composition, patch reconstruction, the
initial encoder's geometry) and each correction of the weights after a step (``init_pull``, ``keep_stem_fill``) is
one object here, built from the config by ``StepObjectives`` or ``StepCorrections``, so the loop in ``loop.py`` runs
them without knowing which are on: a new term or correction is an entry here, not a new branch of the loop. What
the optimizer trains at all (``freeze_stem``, ``stem_lr_scale``) stays with the loop's parameter groups.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from loc2vec.models.encoders import Encoder
from loc2vec.models.losses import (
    PatchReconstruction,
    ReconstructionObjective,
    alike_compositions,
    channel_cells,
    composition_neighbours,
    decorrelation,
    disc_composition,
    distance_matching,
    mask_cells,
)
from loc2vec.training.config import PARTS_OF_TARGET, TrainConfig


@dataclass
class StepBatch:
    """One step's crops as the encoder sees them (``x``, masked when the config masks cells) and what is read
    of them before masking: the reconstruction's ``target``, the centre's ``composition``, the pairs of crops
    ``alike`` in it (negatives the metric loss drops), and the ``unmasked`` crops the initial encoder embeds."""

    x: torch.Tensor
    target: torch.Tensor | None = None
    composition: torch.Tensor | None = None
    alike: torch.Tensor | None = None
    unmasked: torch.Tensor | None = None

    @classmethod
    def of(cls, x: torch.Tensor, config: TrainConfig) -> StepBatch:
        """The step's batch of crops ``x`` (N, C, S, S): the targets first, then the mask (torch's seeded RNG)."""
        target = channel_cells(x, config.recon_cells) if config.recon_weight > 0 else None
        composition = alike = None
        if config.composition_weight > 0 or config.negative_composition_l1 is not None:
            composition = disc_composition(x, config.composition_radius_px)
        if config.negative_composition_l1 is not None:
            alike = alike_compositions(composition, config.negative_composition_l1)
        unmasked = x
        if config.mask_ratio > 0:
            x = mask_cells(x, config.recon_cells, config.mask_ratio)
        return cls(x, target, composition, alike, unmasked if config.init_geometry_weight > 0 else None)


# A term: (the batch, its place representation or None) -> its unweighted losses, each added as it comes at its own
# weight (the composition and initial geometry terms on both parts give two)
Term = Callable[[StepBatch, torch.Tensor | None], Iterator[torch.Tensor]]


def _single(loss: Callable[[StepBatch, torch.Tensor | None], torch.Tensor]) -> Term:
    """A term of one loss."""

    def term(batch: StepBatch, representation: torch.Tensor | None) -> Iterator[torch.Tensor]:
        yield loss(batch, representation)

    return term


def _shaped_parts(representation: torch.Tensor, target: str, context_dim: int) -> list[torch.Tensor]:
    """The parts of the place ``representation`` a ``target`` of ``PARTS_OF_TARGET`` names, every part cut
    before a term's first loss, so autograd sums their gradients in one order."""
    parts = PARTS_OF_TARGET[target]
    return [representation if part == "place" else representation[:, :context_dim] for part in parts]


def _part_weights(target: str, weight: float, context_weight: float | None = None) -> tuple[float, ...]:
    """The weight of each loss a term on the parts ``target`` names yields, in ``_shaped_parts``' order: ``weight``,
    the context part at ``context_weight`` where that is set."""
    return tuple(
        context_weight if part == "context" and context_weight is not None else weight
        for part in PARTS_OF_TARGET[target]
    )


class StepObjectives:
    """The auxiliary terms a config turns on, with the decoders some of them train beside the encoder.

    ``loss`` adds each term's losses at their weights to the metric loss, always in the same order (reconstruction,
    decorrelation, composition, patch reconstruction, initial geometry), so a run's loss is the same sum wherever
    it runs. Build it from the seeded model, before a checkpoint's weights are loaded: the initial geometry's
    encoder is a frozen copy of it.
    The decoders' weights go into the checkpoint under ``state_dict``'s keys (None where a term is off).
    """

    def __init__(self, config: TrainConfig, model: Encoder, channels: int, device: torch.device) -> None:
        self.terms: list[tuple[tuple[float, ...], Term]] = []  # a term and the weight of each loss it yields
        self.reconstruction: ReconstructionObjective | None = None
        self.patch: PatchReconstruction | None = None
        self._unhook: Callable[[], None] | None = None
        # the initial encoder is copied before the patch term hooks the encoder's stem (a copy would carry the hook)
        geometry = self._initial_geometry(model, config.init_geometry_on) if config.init_geometry_weight > 0 else None
        if config.recon_weight > 0:
            width = model.context_dim if config.recon_from == "context" else model.representation_dim
            recon = ReconstructionObjective(width, channels, config.recon_cells).to(device)
            self.reconstruction = recon
            self.terms.append(((config.recon_weight,), _single(lambda b, rep: recon(rep[:, :width], b.target))))
        if config.decorrelation_weight > 0:
            self.terms.append(((config.decorrelation_weight,), _single(lambda _b, rep: decorrelation(rep))))
        if config.composition_weight > 0:
            weights = _part_weights(config.composition_on, config.composition_weight)
            self.terms.append((weights, self._composition(config, model.context_dim)))
        if config.patch_recon_weight > 0:
            self.patch, seen = self._patch_reconstruction(model, channels, device)
            patch = self.patch
            self.terms.append(((config.patch_recon_weight,), _single(lambda b, _rep: patch(seen["stem"], b.x))))
        if geometry is not None:
            weights = _part_weights(
                config.init_geometry_on, config.init_geometry_weight, config.init_geometry_context_weight
            )
            self.terms.append((weights, geometry))
        self.needs_representation = (
            config.recon_weight > 0
            or config.decorrelation_weight > 0
            or config.composition_weight > 0
            or config.init_geometry_weight > 0
        )

    @staticmethod
    def _composition(config: TrainConfig, context_dim: int) -> Term:
        """The composition term on each part ``composition_on`` names: the representation, its context part."""

        def term(batch: StepBatch, representation: torch.Tensor | None) -> Iterator[torch.Tensor]:
            for shaped in _shaped_parts(representation, config.composition_on, context_dim):
                yield composition_neighbours(
                    shaped, batch.composition, config.temperature, config.composition_temperature
                )

        return term

    @staticmethod
    def _initial_geometry(model: Encoder, target: str) -> Term:
        """The term keeping the relative distances of each part ``target`` names (``init_geometry_on``) at those of
        the same part in a frozen copy of the seeded ``model`` (in eval mode, as the untrained baseline embeds) on
        the unmasked crops; rebuilt from the seed by a resumed run and every DDP rank alike, so it needs no
        checkpoint entry."""
        initial = copy.deepcopy(model).eval().requires_grad_(False)
        context_dim = model.context_dim

        def term(batch: StepBatch, representation: torch.Tensor | None) -> Iterator[torch.Tensor]:
            with torch.no_grad():
                reference = initial.embed(batch.unmasked)
            kept = _shaped_parts(representation, target, context_dim)
            for part, initial_part in zip(kept, _shaped_parts(reference, target, context_dim), strict=True):
                yield distance_matching(part, initial_part)

        return term

    def _patch_reconstruction(
        self, model: Encoder, channels: int, device: torch.device
    ) -> tuple[PatchReconstruction, dict[str, torch.Tensor]]:
        """The patch decoder for the encoder's stem and the dict each forward pass leaves the stem's output in
        (``"stem"``); ``close`` takes that hook off the encoder again (a trained model carries no hook)."""
        conv = model.backbone.stem[0]
        decoder = PatchReconstruction(conv.out_channels, channels, conv.kernel_size[0]).to(device)
        seen: dict[str, torch.Tensor] = {}
        hook = model.backbone.stem.register_forward_hook(lambda _m, _i, output: seen.__setitem__("stem", output))
        self._unhook = hook.remove
        return decoder, seen

    @property
    def decoders(self) -> list[torch.nn.Module]:
        """The modules the terms train beside the encoder (their gradients averaged over DDP ranks by the loop)."""
        return [m for m in (self.reconstruction, self.patch) if m is not None]

    def loss(self, metric: torch.Tensor, batch: StepBatch, representation: torch.Tensor | None) -> torch.Tensor:
        """The step's loss: the ``metric`` loss plus every term's losses, each at its weight."""
        total = metric
        for weights, term in self.terms:
            for weight, part in zip(weights, term(batch, representation), strict=True):
                total = total + weight * part
        return total

    def state_dict(self) -> dict[str, dict | None]:
        return {
            "reconstruction": self.reconstruction.state_dict() if self.reconstruction is not None else None,
            "patch_reconstruction": self.patch.state_dict() if self.patch is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """The decoders' weights from a checkpoint written with ``state_dict``'s keys."""
        if self.reconstruction is not None:
            self.reconstruction.load_state_dict(state["reconstruction"])
        if self.patch is not None:
            self.patch.load_state_dict(state["patch_reconstruction"])

    def close(self) -> None:
        """Take the patch reconstruction's hook off the encoder (a trained model carries no hook)."""
        if self._unhook is not None:
            self._unhook()
            self._unhook = None


class InitialWeights:
    """A copy of the backbone's seeded initial weights: ``after_step`` moves every trained backbone weight ``lr *
    strength`` of its way back to where it started, ``lr`` its parameter group's current learning rate (the
    decoupled L2-SP penalty, applied after the optimizer's step as AdamW applies weight decay), so training
    keeps what the random features had unless the objectives pay for the change."""

    def __init__(self, model: Encoder, strength: float) -> None:
        self.strength = strength
        self.initial = {id(p): p.detach().clone() for p in model.backbone.parameters() if p.requires_grad}

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            shrink = min(1.0, group["lr"] * self.strength)
            for weight in group["params"]:
                if id(weight) in self.initial:
                    weight.lerp_(self.initial[id(weight)], shrink)


class StemFill:
    """The patch stem's response to a uniform fill of each channel, kept at its seeded value: ``after_step`` puts
    each kernel's mean over its taps back after the optimizer's step, so the patterns around that mean train
    while the stem still sees how much of a patch each channel fills (``TrainConfig.keep_stem_fill``)."""

    def __init__(self, model: Encoder) -> None:
        self.weight = model.backbone.stem[0].weight
        self.fill = self.weight.detach().mean(dim=(2, 3), keepdim=True).clone()

    @torch.no_grad()
    def after_step(self, _optimizer: torch.optim.Optimizer) -> None:
        self.weight.sub_(self.weight.mean(dim=(2, 3), keepdim=True)).add_(self.fill)


class StepCorrections:
    """What puts weights back after each optimizer step (``init_pull``, then ``keep_stem_fill``), built from the
    model's seeded weights: build it before a checkpoint's weights are loaded, so a resumed run keeps the same
    targets. What they keep (the initial weights, the kernels' means) is rebuilt from the seed by every resumed
    run and every DDP rank alike, so it needs no checkpoint entry."""

    def __init__(self, config: TrainConfig, model: Encoder) -> None:
        self.corrections: list[InitialWeights | StemFill] = []
        if config.init_pull > 0:
            self.corrections.append(InitialWeights(model, config.init_pull))
        if config.keep_stem_fill:
            self.corrections.append(StemFill(model))

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for correction in self.corrections:
            correction.after_step(optimizer)


def freeze_stem(model: Encoder) -> torch.nn.Module:
    """The encoder's patch stem, its weights no longer trained (the loop keeps its batch norm in eval mode)."""
    stem = model.backbone.stem
    stem.requires_grad_(False)
    return stem
