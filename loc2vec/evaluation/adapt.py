"""An encoder's batch-norm statistics recomputed on a region's own crops (AdaBN: Li et al. 2016, "Revisiting
batch normalization for practical domain adaptation").

A model trained elsewhere normalises each layer with the means and variances of the regions it trained on:
a dense city's crops seen through a rural region's statistics (or the other way round) come out shifted and
scaled. Recomputing the statistics on crops of the region it embeds changes no learnt weight and needs no
label: only where the region's places are. The protocol takes them from its *train* points, so the test
blocks stay unseen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from loc2vec.data.crops import CropGeometry
from loc2vec.errors import InputDataError
from loc2vec.evaluation.embedders import crops_tensor

MIN_ADAPTATION_CROPS = 64  # fewer crops give statistics noisier than the training regions' ones


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def adapt_batchnorm(
    model: nn.Module, reader: CropGeometry, xy: np.ndarray, crop_px: int, seed: int = 0, batch: int = 256
) -> nn.Module:
    """A copy of ``model`` whose batch-norm running means and variances are those of the north-up crops at
    the CRS points ``xy`` (every point once, in a seeded random order, so each batch mixes the region;
    batches of equal size; the average over them as ``torch.optim.swa_utils.update_bn`` computes it). ``model`` is
    unchanged; a model without batch norm is returned as a copy."""
    adapted = copy.deepcopy(model)
    if not has_batchnorm(adapted):
        return adapted
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < MIN_ADAPTATION_CROPS:
        raise InputDataError(
            f"{len(xy)} places to adapt the batch-norm statistics on: at least {MIN_ADAPTATION_CROPS} are needed"
        )
    order = np.random.default_rng([seed, 2016]).permutation(len(xy))
    device = next(adapted.parameters()).device

    def crops() -> Iterator[torch.Tensor]:
        # batches of (nearly) equal size: update_bn averages the batches' statistics with equal weights
        for part_order in np.array_split(order, -(-len(order) // batch)):
            yield crops_tensor(reader, xy[part_order], crop_px, device)

    update_bn(crops(), adapted)
    return adapted.eval()
