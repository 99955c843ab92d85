"""Encoders from a (N, C, S, S) uint8 crop to an L2-normalised embedding.

``small_cnn`` (default) is designed for CPU speed: a 4x4/stride-4 patch stem removes the expensive
full-resolution layers (where a plain CNN spends half its time in BN/ReLU/pooling), then three
stride-2 stages with a 3x3 refinement each. torchvision backbones get a 12-channel stem; pretrained
RGB weights come only from a local file and are inflated to 12 channels (mean over RGB, rescaled).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loc2vec.errors import ConfigError, InputDataError

ENCODERS = ("small_cnn", "small_cnn_wide", "resnet18", "efficientnet_b0", "mobilenet_v3_small")
# the stage widths of the small CNNs: ``small_cnn_wide`` doubles every one (a 448-d place embedding, not 224)
SMALL_CNN_WIDTHS = {"small_cnn": (32, 64, 128, 128), "small_cnn_wide": (64, 128, 256, 256)}


def central_half(x: torch.Tensor) -> torch.Tensor:
    """The central half of a batch of square maps (..., H, W) on each side: what a place embedding reads as
    the place itself, against the rest of the crop around it."""
    h, w = x.shape[-2:]
    return x[..., h // 4 : h - h // 4, w // 4 : w - w // 4]


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    pad = kernel // 2 if kernel % 2 else 0
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """Patch stem (k4 s4) -> 3 stages (s2 conv + 3x3 conv) -> global average pool.

    ``place_features`` adds what is *at* and *around* the place to that context, from the stem's features
    (4x4-px patches): their mean over the crop's central half, their mean over the whole crop, and their
    maximum over the whole crop (whether a pattern occurs at all: a point of interest is a few patches).
    """

    def __init__(self, in_channels: int = 12, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, widths[0], kernel=4, stride=4)]
        for cin, cout in itertools.pairwise(widths):
            layers += [_conv_bn(cin, cout, stride=2), _conv_bn(cout, cout)]
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    @property
    def stem(self) -> nn.Module:
        """The patch stem (4 x 4-px patches projected to the first width, batch norm, ReLU)."""
        return self.features[0]

    def place_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(context, centre, whole, peak): globally pooled last stage; the stem averaged over the central
        half, averaged over the crop, and its maximum over the crop."""
        stem = self.features[0](x)
        context = F.adaptive_avg_pool2d(self.features[1:](stem), 1).flatten(1)
        centre = central_half(stem).mean(dim=(2, 3))
        return context, centre, stem.mean(dim=(2, 3)), stem.amax(dim=(2, 3))

    @property
    def place_dim(self) -> int:
        """Width of ``place_features`` concatenated: the context, then three parts of the stem's width."""
        return self.out_features + 3 * self.features[0][0].out_channels


def _inflate_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem weights (O, 3, k, k) -> (O, C, k, k): the RGB mean repeated, scaled by 3/C."""
    if weight.shape[1] == in_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def _torchvision_backbone(name: str, in_channels: int, weights_path: str | None) -> tuple[nn.Module, int]:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(f"pretrained weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or len(missing) > 2:
            raise ConfigError(f"weights {path.name} do not fit {name}: missing {missing[:5]}, extra {unexpected[:5]}")
    if name == "resnet18":
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)
        model.conv1.weight.data = _inflate_stem(old.weight.data, in_channels)
        dim = model.fc.in_features
        model.fc = nn.Identity()
    else:  # efficientnet_b0, mobilenet_v3_small: features[0][0] is the stem conv
        old = model.features[0][0]
        stem = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        stem.weight.data = _inflate_stem(old.weight.data, in_channels)
        model.features[0][0] = stem
        dim = next(m.in_features for m in model.classifier if isinstance(m, nn.Linear))
        model.classifier = nn.Identity()
    return model, dim


def _place_representation(*parts: torch.Tensor) -> torch.Tensor:
    """The parts of ``SmallCNN.place_features``, each normalised, as one unit-length vector."""
    normalised = [F.normalize(part.float(), dim=1) for part in parts]
    return torch.cat(normalised, dim=1) / math.sqrt(len(parts))


class Encoder(nn.Module):
    """Backbone + linear projection head; input uint8 (or float in [0, 1]).

    ``forward`` gives the unit-length *projection* the triplet loss is trained on; ``embed`` gives the
    unit-length *representation* the embeddings, the evaluation and the similarity index use: the
    features before the head (the head only has to separate places for the loss and drops what the
    loss does not need, as in SimCLR, Chen et al. 2020, section 4.2) and, for ``small_cnn``, the stem's
    features over the centre of the crop, each half normalised. Measured in docs/evaluation.md.
    """

    def __init__(self, backbone: nn.Module, features: int, embedding_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, embedding_dim)

    @staticmethod
    def _scaled(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    def forward(self, x: torch.Tensor, with_representation: bool = False):
        """The projection; with ``with_representation`` also the representation, from one backbone pass
        (what an auxiliary objective on the representation trains with; a keyword so DDP passes it on)."""
        x = self._scaled(x)
        if not with_representation:
            return F.normalize(self.head(self.backbone(x)).float(), dim=1)
        if not isinstance(self.backbone, SmallCNN):
            features = self.backbone(x)
            return F.normalize(self.head(features).float(), dim=1), F.normalize(features.float(), dim=1)
        parts = self.backbone.place_features(x)
        return F.normalize(self.head(parts[0]).float(), dim=1), _place_representation(*parts)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self._scaled(x)
        if not isinstance(self.backbone, SmallCNN):
            return F.normalize(self.backbone(x).float(), dim=1)
        return _place_representation(*self.backbone.place_features(x))

    @property
    def representation_dim(self) -> int:
        if isinstance(self.backbone, SmallCNN):
            return self.backbone.place_dim
        return self.head.in_features

    @property
    def context_dim(self) -> int:
        """Width of the representation's first part, the context (the whole representation of a backbone
        without a patch stem)."""
        return self.head.in_features


class PlaceEmbedding(nn.Module):
    """The encoder as the rest of the system uses it: ``forward`` is ``Encoder.embed``, the place embedding
    (what the registered MLflow model returns; the projection head stays inside, unused)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(x)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that rebuilds an encoder's architecture (saved with its weights)."""

    name: str = "small_cnn"
    embedding_dim: int = 16
    in_channels: int = 12


WEIGHTS_FORMAT = "loc2vec-encoder/1"


def save_encoder(model: Encoder, path: str | Path) -> Path:
    """Write the weights with the architecture that holds them (atomically)."""
    from loc2vec.io import atomic_path

    state = {"format": WEIGHTS_FORMAT, "spec": asdict(model.spec), "state_dict": model.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def _first_line(exc: BaseException) -> str:
    """An exception's message up to its first line break (torch's unpickling errors run over many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_encoder(path: str | Path) -> Encoder:
    """The encoder saved by ``save_encoder``: architecture and weights, in eval mode, on the CPU.

    The one way to load a trained encoder (embeddings, the similarity index, ``loc2vec similar``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"encoder weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not its own
        raise InputDataError(
            f"{path} is not a loc2vec encoder file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT:
        raise InputDataError(
            f"{path} holds weights without their architecture (written by an older loc2vec): train the model again"
        )
    spec = EncoderSpec(**state["spec"])
    model = build_encoder(spec.name, spec.embedding_dim, spec.in_channels)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def build_encoder(
    name: str = "small_cnn", embedding_dim: int = 16, in_channels: int = 12, weights_path: str | None = None
) -> Encoder:
    """A new encoder (``weights_path``: local torchvision RGB weights to start from, inflated to the channels)."""
    encoder = _new_encoder(name, embedding_dim, in_channels, weights_path)
    encoder.spec = EncoderSpec(name, embedding_dim, in_channels)
    return encoder


def _new_encoder(name: str, embedding_dim: int, in_channels: int, weights_path: str | None) -> Encoder:
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of {ENCODERS}")
    if embedding_dim < 2:
        raise ConfigError(f"embedding_dim must be >= 2, got {embedding_dim}")
    if name in SMALL_CNN_WIDTHS:
        if weights_path is not None:
            raise ConfigError(f"{name} has no pretrained weights; weights_path is for torchvision encoders")
        backbone = SmallCNN(in_channels, SMALL_CNN_WIDTHS[name])
        return Encoder(backbone, backbone.out_features, embedding_dim)
    backbone, dim = _torchvision_backbone(name, in_channels, weights_path)
    return Encoder(backbone, dim, embedding_dim)
