"""Training: loss goes down on real data, resume is exact, encoders, losses, bad config."""

import json
import pickle

import numpy as np
import pytest
import torch

from loc2vec.errors import ConfigError
from loc2vec.evaluation.embedders import crops_tensor
from loc2vec.evaluation.run import untrained_encoder
from loc2vec.models.encoders import ENCODERS, build_encoder
from loc2vec.models.losses import (
    PatchReconstruction,
    ReconstructionObjective,
    TripletObjective,
    alike_compositions,
    channel_cells,
    composition_neighbours,
    decorrelation,
    disc_composition,
    distance_matching,
    mask_cells,
    soft_pn,
)
from loc2vec.training.checkpoint import load_checkpoint
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import select_device
from loc2vec.training.loop import SimulatedCrash, parameter_groups, train
from loc2vec.training.objectives import InitialWeights, StepBatch, StepObjectives

FAST = dict(crop_px=64, batch_size=32, steps_per_epoch=8, val_triplets=64, r_neg_m=300.0, seed=1)


def _xy(manifest):
    return manifest.xy("train"), manifest.xy("val")


def test_loss_goes_down_on_real_data(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    config = TrainConfig(epochs=4, patience=10, **FAST)
    result = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path)
    history = result.history
    assert len(history) == 4
    assert history[-1].val_loss < history[0].val_loss
    assert history[-1].train_loss < history[0].train_loss
    assert all(np.isfinite(h.val_loss) for h in history)


@pytest.mark.parametrize(
    "objective",
    [{}, {"patch_recon_weight": 1.0}, {"init_geometry_weight": 1.0}],
    ids=["triplet", "patch-reconstruction", "initial-geometry"],
)
def test_resume_after_a_killed_run_is_identical_to_an_uninterrupted_run(objective, monaco_samples, tmp_path):
    """Resumed, the run continues as if it had not stopped (with an auxiliary decoder: from its saved state)."""
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    config = TrainConfig(epochs=3, patience=10, **objective, **FAST)
    device = select_device("cpu")
    full = train(config, reader, train_xy, val_xy, device, tmp_path / "full")
    with pytest.raises(SimulatedCrash):
        train(config, reader, train_xy, val_xy, device, tmp_path / "resumed", crash_after_epoch=0)
    resumed = train(config, reader, train_xy, val_xy, device, tmp_path / "resumed")
    assert resumed.resumed_from_epoch == 1
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in full.history]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_config_is_refused(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    device = select_device("cpu")
    train(TrainConfig(epochs=1, **FAST), reader, train_xy, val_xy, device, tmp_path)
    with pytest.raises(ConfigError, match="another training config"):
        train(TrainConfig(epochs=1, lr=1e-4, **FAST), reader, train_xy, val_xy, device, tmp_path)


def test_checkpoint_trained_on_another_split_is_refused(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    device = select_device("cpu")
    config = TrainConfig(epochs=1, **FAST)
    train(config, reader, train_xy, val_xy, device, tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="other train/val anchors"):
        train(config, reader, train_xy[1:], val_xy, device, tmp_path)  # same config, another split
    assert (tmp_path / "last.pt").read_bytes() == before  # the old run is left as it was
    assert train(config, reader, train_xy, val_xy, device, tmp_path).resumed_from_epoch == 1


@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_embeds_12_channels_to_unit_vectors(name):
    model = build_encoder(name, embedding_dim=16).eval()
    x = torch.randint(0, 255, (2, 12, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_rgb_weights_from_a_local_file_are_inflated_to_12_channels(tmp_path):
    import torchvision

    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(rgb.state_dict(), path)
    model = build_encoder("resnet18", 64, weights_path=str(path))
    stem = model.backbone.conv1.weight
    assert stem.shape[1] == 12
    expected = rgb.conv1.weight.mean(dim=1, keepdim=True) * (3 / 12)
    assert torch.allclose(stem[:, :1], expected)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    with pytest.raises(ConfigError, match="not found"):
        build_encoder("resnet18", 16, weights_path=str(tmp_path / "missing.pth"))


def test_soft_pn_matches_its_definition():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])
    n = torch.tensor([[-1.0, 0.0]])
    d_ap, d_star = 2**0.5, min(2.0, 2**0.5)
    e = torch.softmax(torch.tensor([d_ap, d_star]), 0)
    assert soft_pn(a, p, n).item() == pytest.approx(float(e[0] ** 2 + (e[1] - 1) ** 2))


def test_objective_drops_negatives_closer_than_r_neg():
    emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    labels = torch.arange(4).repeat(2)
    locations = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1000.0, 0.0], [2000.0, 0.0]])
    objective = TripletObjective("triplet", 0.2, "all")
    a, p, n = objective.all_triplets(emb, labels)
    a, p, n = objective.far_negatives((a, p, n), labels, locations, r_neg=500.0)
    pairs = {(int(labels[i]), int(labels[j])) for i, j in zip(a, n, strict=True)}
    assert (0, 1) not in pairs and (1, 0) not in pairs and (0, 2) in pairs


def test_max_negative_m_keeps_negatives_within_reach_of_the_anchor():
    """Anchors 0-2 in one region, 3 another region 2,000 km away: with max_negative_m, 3 is no one's negative."""
    emb = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(4).repeat(2)
    locations = torch.tensor([[0.0, 0.0], [1000.0, 0.0], [3000.0, 0.0], [2.0e6, 0.0]])
    objective = TripletObjective("triplet", 0.2, "all")
    triplets = objective.all_triplets(emb, labels)
    a, _, n = objective.far_negatives(triplets, labels, locations, r_neg=500.0, r_max=50_000.0)
    pairs = {(int(labels[i]), int(labels[j])) for i, j in zip(a, n, strict=True)}
    assert pairs == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)}
    a, _, n = objective.far_negatives(triplets, labels, locations, r_neg=500.0)
    assert {(int(labels[i]), int(labels[j])) for i, j in zip(a, n, strict=True)} >= {(0, 3), (3, 0)}
    infonce = TripletObjective("infonce", temperature=0.5)
    alone = torch.tensor([[0.0, 0.0], [1.0e6, 0.0], [2.0e6, 0.0], [3.0e6, 0.0]])  # no pair within 50 km
    emb.requires_grad_()
    assert infonce(emb, labels, alone, r_neg=500.0, r_max=50_000.0).item() == 0.0
    assert infonce(emb, labels, alone, r_neg=500.0).item() > 0.0
    assert TrainConfig().digest() == TrainConfig(max_negative_m=None).digest()  # older runs keep their identity
    assert TrainConfig(max_negative_m=50_000.0).digest() != TrainConfig().digest()


def test_negatives_alike_to_their_anchor_are_dropped():
    """Samples whose centres hold the same mix of fills are no negatives of each other, in mined triplets and in
    InfoNCE; the rest of the far negatives stay."""
    emb = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(4).repeat(2)
    locations = torch.tensor([[0.0, 0.0], [1000.0, 0.0], [2000.0, 0.0], [3000.0, 0.0]])
    # anchors 0 and 1 (and their positives) are forest, 2 and 3 houses: 0 and 1 hold the same at their centre
    composition = torch.tensor([[0.9, 0.0], [0.85, 0.05], [0.0, 0.6], [0.3, 0.3]]).repeat(2, 1)
    alike = alike_compositions(composition, max_l1=0.2)
    assert alike.diagonal().all() and alike[0, 1] and alike[0, 5] and not alike[0, 2] and not alike[2, 3]
    objective = TripletObjective("triplet", 0.2, "all")
    triplets = objective.all_triplets(emb, labels)
    a, _, n = objective.far_negatives(triplets, labels, locations, r_neg=500.0, alike=alike)
    pairs = {(int(labels[i]), int(labels[j])) for i, j in zip(a, n, strict=True)}
    assert (0, 1) not in pairs and (1, 0) not in pairs and {(0, 2), (0, 3), (2, 3), (3, 2)} <= pairs
    a, _, n = objective.far_negatives(triplets, labels, locations, r_neg=500.0)
    assert (0, 1) in {(int(labels[i]), int(labels[j])) for i, j in zip(a, n, strict=True)}
    infonce = TripletObjective("infonce", temperature=0.5)
    emb.requires_grad_()
    everyone_alike = torch.ones(8, 8, dtype=torch.bool)
    assert infonce(emb, labels, locations, r_neg=500.0, alike=everyone_alike).item() == 0.0
    assert infonce(emb, labels, locations, r_neg=500.0, alike=alike).item() != infonce(emb, labels, locations, 500.0)
    assert TrainConfig().digest() == TrainConfig(negative_composition_l1=None).digest()  # older runs keep theirs
    on = TrainConfig(negative_composition_l1=0.2)
    assert on.digest() != TrainConfig().digest()
    # the disc's radius counts once negatives are judged by it, and not before
    assert on.digest() != TrainConfig(negative_composition_l1=0.2, composition_radius_px=8).digest()
    assert TrainConfig().digest() == TrainConfig(composition_radius_px=8).digest()


def test_infonce_contrasts_each_pair_with_its_far_negatives_only():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    labels = torch.arange(3).repeat(2)
    locations = torch.tensor([[0.0, 0.0], [100.0, 0.0], [3000.0, 0.0]])  # anchors 0 and 1 are near
    loss = TripletObjective("infonce", temperature=0.5)(emb, labels, locations, r_neg=500.0)
    sim = emb @ emb.T / 0.5
    expected = []
    for i in range(6):
        j = (i + 3) % 6  # its pair
        far = [k for k in range(6) if k not in (i, j) and abs(locations[i % 3, 0] - locations[k % 3, 0]) >= 500]
        logits = torch.cat([sim[i, j : j + 1], sim[i, far]])
        expected.append(-torch.log_softmax(logits, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    all_near = TripletObjective("infonce")(emb.requires_grad_(), labels, torch.zeros(3, 2), r_neg=500.0)
    assert all_near.item() == 0.0 and all_near.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr must be > 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"max_negative_m": 400.0}, "max_negative_m must be > r_neg_m"),
        ({"encoder": "vgg99"}, "encoder must be one of"),
        ({"loss": "contrastive"}, "loss must be one of"),
        ({"r_pos_m": 600.0, "r_neg_m": 500.0}, "r_pos_m < r_neg_m"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"recon_weight": -1.0}, "recon_weight must be >= 0"),
        ({"mask_ratio": 1.0}, "mask_ratio must be in"),
        ({"recon_cells": 0}, "recon_cells must be >= 1"),
        ({"recon_from": "stem"}, "recon_from must be one of"),
        ({"decorrelation_weight": -0.1}, "decorrelation_weight must be >= 0"),
        ({"encoder": "resnet18", "freeze_stem": True}, "freeze_stem needs a small_cnn encoder"),
        ({"stem_lr_scale": 0.0}, "stem_lr_scale must be in"),
        ({"encoder": "resnet18", "stem_lr_scale": 0.1}, "stem_lr_scale needs a small_cnn encoder"),
        ({"patch_recon_weight": -1.0}, "patch_recon_weight must be >= 0"),
        ({"encoder": "resnet18", "patch_recon_weight": 1.0}, "patch_recon_weight needs a small_cnn encoder"),
        ({"freeze_stem": True, "patch_recon_weight": 1.0}, "which freeze_stem keeps at its initial weights"),
        ({"init_pull": -1.0}, "init_pull must be >= 0"),
        ({"composition_weight": -1.0}, "composition_weight must be >= 0"),
        ({"init_geometry_weight": -1.0}, "init_geometry_weight must be >= 0"),
        ({"crop_px": 64, "composition_radius_px": 33.0}, "composition_radius_px must be in"),
        ({"composition_temperature": 0.0}, "composition_temperature must be > 0"),
        ({"composition_on": "stem"}, "composition_on must be one of"),
        ({"init_geometry_on": "stem"}, "init_geometry_on must be one of"),
        (
            {"init_geometry_weight": 1.0, "init_geometry_on": "both", "init_geometry_context_weight": -1.0},
            "init_geometry_context_weight must be >= 0",
        ),
        ({"init_geometry_weight": 1.0, "init_geometry_context_weight": 0.3}, "set init_geometry_on='both'"),
        ({"negative_composition_l1": 0.0}, "negative_composition_l1 must be > 0"),
        ({"encoder": "resnet18", "keep_stem_fill": True}, "keep_stem_fill needs a small_cnn encoder"),
        ({"keep_stem_fill": True, "freeze_stem": True}, "keep_stem_fill keeps part of a stem that freeze_stem"),
    ],
)
def test_bad_hyperparameters_fail_clearly(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_asking_for_an_absent_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="cuda"):
        select_device("cuda")
    spec = select_device("auto")
    assert spec.kind in {"cpu", "mps"} and spec.amp_dtype is None


class _RecordingReader:
    """A CropReader proxy that records the pixel centres it is asked to cut."""

    def __init__(self, reader):
        self.reader, self.calls = reader, []

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def crops_px(self, cols, rows, size, angles=None):
        self.calls.append((np.asarray(cols).copy(), np.asarray(rows).copy()))
        return self.reader.crops_px(cols, rows, size, angles)


def _positive_offsets_m(reader, xy, spec, steps=6):
    from loc2vec.data.triplets import TripletBatches

    rec = _RecordingReader(reader)
    batches = TripletBatches(rec, xy, spec, seed=3, epoch=0, steps=steps)
    for k in range(steps):
        batches.batch(k)
    offsets = []
    for (ac, ar), (pc, pr) in zip(rec.calls[0::2], rec.calls[1::2], strict=True):
        offsets.append(np.hypot(pc - ac, pr - ar))  # anchor shift (<= 4 px each way) included
    return np.concatenate(offsets) * reader.grid.resolution


def test_context_positives_reach_the_wider_radius_for_their_share(monaco_samples):
    from dataclasses import replace

    from loc2vec.data.triplets import TripletSpec

    reader, manifest = monaco_samples
    xy = manifest.xy("train")
    spec = TripletSpec(crop_px=32, batch_size=32, r_pos_m=60.0, r_neg_m=400.0)
    shift_m = 4 * np.sqrt(2) * reader.grid.resolution
    near = _positive_offsets_m(reader, xy, spec)
    assert near.max() <= 60.0 + shift_m
    wide = _positive_offsets_m(reader, xy, replace(spec, r_context_m=200.0, context_share=0.5))
    assert wide.max() <= 200.0 + shift_m
    beyond = (wide > 60.0 + shift_m).mean()
    assert 0.25 < beyond < 0.5  # half are context positives; of those, (1 - (77/200)^2) land beyond 77 m
    with pytest.raises(ConfigError, match="r_context_m"):
        TripletSpec(r_pos_m=100.0, r_neg_m=500.0, r_context_m=600.0)


def test_training_refuses_positives_wider_than_the_split_buffer(monaco_samples):
    from loc2vec.training.run import check_split_fits

    _, manifest = monaco_samples  # split built for positives up to 250 m, 64-px crops
    check_split_fits(TrainConfig(**FAST), manifest)
    with pytest.raises(ConfigError, match="leak buffer"):
        check_split_fits(TrainConfig(**{**FAST, "r_context_m": 280.0}), manifest)
    with pytest.raises(ConfigError, match="leak buffer"):
        check_split_fits(TrainConfig(**{**FAST, "crop_px": 128}), manifest)


def test_embed_is_context_before_the_head_plus_the_stem_at_the_centre_over_the_crop_and_its_peak(monaco_samples):
    from loc2vec.evaluation.embedders import encode

    reader, manifest = monaco_samples
    torch.manual_seed(0)
    model = build_encoder("small_cnn", embedding_dim=16).eval()
    xy = manifest.xy("test")[:8]
    vectors = encode(model, reader, xy, crop_px=64)
    assert vectors.shape == (8, model.representation_dim) and model.representation_dim == 128 + 3 * 32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    crops = torch.from_numpy(reader.crops_px(*reader.grid.xy_to_pixel(xy[:, 0], xy[:, 1]), 64)[0])
    x = crops.permute(0, 3, 1, 2).float() / 255.0
    normalise = torch.nn.functional.normalize
    with torch.no_grad():
        context = normalise(model.backbone(x), dim=1)
        stem = model.backbone.features[0](x)  # (8, 32, 16, 16): the central half is rows/cols 4..11
        centre = normalise(stem[..., 4:12, 4:12].mean(dim=(2, 3)), dim=1)
        whole = normalise(stem.mean(dim=(2, 3)), dim=1)
        peak = normalise(stem.amax(dim=(2, 3)), dim=1)
        projected = model(crops.permute(0, 3, 1, 2))
    spans = [(0, 128), (128, 160), (160, 192), (192, 224)]
    for part, (start, stop) in zip([context, centre, whole, peak], spans, strict=True):
        assert np.allclose(vectors[:, start:stop], part.numpy() / 2, atol=1e-5)
    assert projected.shape == (8, 16)  # the loss still sees the 16-d projection
    # the centre half moves with what is at the place: blank out the centre and the centre part changes most
    blank = crops.clone()
    blank[:, 16:48, 16:48] = 0
    changed = np.abs(_embed_crops(model, blank) - _embed_crops(model, crops))
    assert changed[:, 128:160].sum() / 32 > changed[:, :128].sum() / 128
    # a single drawn pixel (a point of interest) on an empty crop moves the peak part
    empty = torch.zeros(1, 12, 64, 64, dtype=torch.uint8)
    dot = empty.clone()
    dot[0, 11, 2, 2] = 255  # far from the centre
    moved = np.abs(_embed_crops(model, dot.permute(0, 2, 3, 1)) - _embed_crops(model, empty.permute(0, 2, 3, 1)))
    assert moved[:, 192:].sum() > 0 and np.allclose(moved[:, 128:160], 0)


def _embed_crops(model, crops):
    with torch.no_grad():
        return model.embed(crops.permute(0, 3, 1, 2)).numpy()


def test_training_config_round_trips_through_json_and_refuses_bad_files(tmp_path):
    config = TrainConfig(seed=3, epochs=2, loss="infonce")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_json(path) == config
    for text, message in (
        ('{"seed": 1, "colour": "red"}', "unknown fields"),
        ("[1, 2]", "JSON object"),
        ("{not json", "cannot read"),
        ('{"epochs": 0}', "epochs must be >= 1"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_json(path)
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.from_json(tmp_path / "missing.json")


def test_an_encoder_is_saved_and_loaded_with_its_architecture(tmp_path):
    from loc2vec.errors import InputDataError
    from loc2vec.models.encoders import EncoderSpec, load_encoder, save_encoder

    model = build_encoder("small_cnn", embedding_dim=8, in_channels=10).eval()
    save_encoder(model, tmp_path / "model.pt")
    loaded = load_encoder(tmp_path / "model.pt")
    assert loaded.spec == EncoderSpec("small_cnn", 8, 10)
    x = torch.randint(0, 255, (2, 10, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(loaded.embed(x), model.embed(x))
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # weights without the architecture
    with pytest.raises(InputDataError, match="without their architecture"):
        load_encoder(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputDataError, match="not a loc2vec encoder file"):
        load_encoder(tmp_path / "junk.pt")


def test_reconstruction_targets_are_channel_shares_and_presence_per_cell_and_at_the_centre():
    x = torch.zeros(2, 12, 64, 64, dtype=torch.uint8)
    x[0, 3, :32, :32] = 255  # channel 3 fills the top-left quarter of the first crop
    x[1, 5, 16:48, 16:48] = 255  # channel 5 fills the central half of the second
    x[1, 9, 40, 40] = 51  # one faint pixel of channel 9 in the second crop's bottom-right cell, in its centre
    target = channel_cells(x, 2)
    assert target.shape == (2, 2 * 12 * (4 + 1))
    shares, presence = target[:, : 12 * 5], target[:, 12 * 5 :]
    grid, centre = shares[:, : 12 * 4].view(2, 12, 2, 2), shares[:, 12 * 4 :]
    assert grid[0, 3].tolist() == [[1.0, 0.0], [0.0, 0.0]] and grid[0].sum() == 1.0
    assert torch.allclose(grid[1, 5], torch.full((2, 2), 0.25)) and centre[1, 5] == 1.0
    assert centre[0, 3] == 0.25 and centre[0].sum() == 0.25
    assert 0 < grid[1, 9, 1, 1] < 1e-3  # the faint pixel is all but lost in the shares ...
    drawn, drawn_centre = presence[:, : 12 * 4].view(2, 12, 2, 2), presence[:, 12 * 4 :]
    assert drawn[1, 9].tolist() == [[0.0, 0.0], [0.0, 1.0]] and drawn_centre[1, 9] == 1.0  # ... not here
    assert drawn[0, 3].tolist() == [[1.0, 0.0], [0.0, 0.0]] and drawn[0].sum() == 1.0
    assert drawn_centre[0].tolist() == [1.0 if c == 3 else 0.0 for c in range(12)]


def test_masking_blanks_the_asked_share_of_cells_in_every_channel():
    torch.manual_seed(0)
    x = torch.full((64, 12, 64, 64), 200, dtype=torch.uint8)
    masked = mask_cells(x, 4, 0.5)
    cells = masked.view(64, 12, 4, 16, 4, 16).amax(dim=(3, 5))
    assert ((cells == 0) | (cells == 200)).all()  # whole cells, every channel alike
    assert (cells == 0).all(dim=1).sum() == (cells[:, 0] == 0).sum()
    assert 0.4 < (cells[:, 0] == 0).float().mean() < 0.6


def test_training_with_masked_reconstruction_resumes_exactly(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    config = TrainConfig(epochs=2, patience=10, recon_weight=1.0, mask_ratio=0.25, **FAST)
    assert config.digest() != TrainConfig(epochs=2, patience=10, **FAST).digest()
    device = select_device("cpu")
    full = train(config, reader, train_xy, val_xy, device, tmp_path / "full")
    assert all(np.isfinite(h.train_loss) for h in full.history)
    with pytest.raises(SimulatedCrash):
        train(config, reader, train_xy, val_xy, device, tmp_path / "resumed", crash_after_epoch=0)
    resumed = train(config, reader, train_xy, val_xy, device, tmp_path / "resumed")
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in full.history]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_frozen_stem_stays_the_untrained_encoders_and_the_rest_trains(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    config = TrainConfig(epochs=2, patience=10, recon_weight=1.0, freeze_stem=True, **FAST)
    assert config.digest() != TrainConfig(epochs=2, patience=10, recon_weight=1.0, **FAST).digest()
    assert TrainConfig().digest() == TrainConfig(freeze_stem=False).digest()  # older runs keep their identity
    trained = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path).model
    untrained = untrained_encoder(config, reader.channels).eval()  # the protocol's untrained baseline
    before, after = untrained.state_dict(), trained.state_dict()
    stem = {k for k in after if k.startswith("backbone.features.0.")}
    assert stem and all(torch.equal(before[k], after[k]) for k in stem)  # weights and batch-norm statistics
    assert all(not torch.equal(before[k], after[k]) for k in after if k.endswith("weight") and k not in stem)
    x = torch.from_numpy(reader.crops_px([400, 500], [300, 350], 64)[0]).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(trained.backbone.stem(x.float() / 255), untrained.backbone.stem(x.float() / 255))


def test_a_slow_stem_trains_at_its_share_of_the_learning_rate(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    torch.manual_seed(0)
    model = build_encoder("small_cnn", 8, reader.channels)
    groups = parameter_groups(model, [], TrainConfig(stem_lr_scale=0.1, lr=1e-3))
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.backbone.stem.parameters()}
    assert len(parameter_groups(model, [], TrainConfig())) == 1
    assert TrainConfig().digest() == TrainConfig(stem_lr_scale=1.0).digest()

    def stem_moved(scale: float) -> float:
        config = TrainConfig(epochs=1, patience=10, stem_lr_scale=scale, **FAST)
        trained = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / str(scale)).model
        start = untrained_encoder(config, reader.channels)
        return float((trained.backbone.stem[0].weight - start.backbone.stem[0].weight).norm().detach())

    assert 0 < stem_moved(0.01) < 0.2 * stem_moved(1.0)


def test_the_pull_to_the_initial_weights_moves_each_weight_its_share_of_the_way_back():
    torch.manual_seed(0)
    model = build_encoder("small_cnn", 8, 12)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    initial = InitialWeights(model, strength=100.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    groups = parameter_groups(model, [], TrainConfig(stem_lr_scale=0.5, lr=2e-3))
    initial.after_step(torch.optim.AdamW(groups))  # rest: 0.2 of the way back, the stem at half the rate: 0.1
    after = model.state_dict()
    stem, conv, head = "backbone.features.0.0.weight", "backbone.features.1.0.weight", "head.weight"
    assert torch.allclose(after[stem] - start[stem], torch.full_like(start[stem], 0.9))
    assert torch.allclose(after[conv] - start[conv], torch.full_like(start[conv], 0.8))
    assert torch.allclose(after[head] - start[head], torch.full_like(start[head], 1.0))  # not the backbone's
    initial.strength = 1e6  # lr * strength far above 1: all the way back, never past the start
    initial.after_step(torch.optim.AdamW(groups))
    pulled = model.state_dict()
    assert all(torch.equal(pulled[k], start[k]) for k in (stem, conv))
    assert torch.allclose(pulled[head] - start[head], torch.full_like(start[head], 1.0))


def test_a_pull_to_the_initial_weights_keeps_training_nearer_its_start(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    assert TrainConfig().digest() == TrainConfig(init_pull=0.0).digest()
    assert TrainConfig().digest() != TrainConfig(init_pull=10.0).digest()

    def moved(pull: float) -> float:
        config = TrainConfig(epochs=2, patience=10, init_pull=pull, **FAST)
        trained = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / str(pull)).model
        start = untrained_encoder(config, reader.channels)
        pairs = zip(trained.backbone.parameters(), start.backbone.parameters(), strict=True)
        return sum(float((a - b).detach().norm()) for a, b in pairs)

    assert 0 < moved(100.0) < 0.5 * moved(0.0)


def test_a_stem_that_keeps_its_fill_trains_its_patterns_around_the_seeded_kernel_means(monaco_samples, tmp_path):
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    assert TrainConfig().digest() == TrainConfig(keep_stem_fill=False).digest()  # older runs keep their identity
    assert TrainConfig().digest() != TrainConfig(keep_stem_fill=True).digest()

    def kernels(keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        config = TrainConfig(epochs=1, patience=10, keep_stem_fill=keep, **FAST)
        trained = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / str(keep)).model
        start = untrained_encoder(config, reader.channels)
        return trained.backbone.stem[0].weight.detach(), start.backbone.stem[0].weight.detach()

    def means(weight: torch.Tensor) -> torch.Tensor:
        return weight.mean(dim=(2, 3))

    kept, start = kernels(True)
    assert torch.allclose(means(kept), means(start), atol=1e-6)  # each channel's fill response as seeded
    assert (kept - start).norm() > 0.01 * start.norm()  # while the patterns around it trained
    free, _ = kernels(False)
    assert (means(free) - means(start)).abs().max() > 100 * (means(kept) - means(start)).abs().max()


def test_distance_matching_compares_how_two_representations_space_a_batch():
    torch.manual_seed(0)
    reference = torch.randn(32, 8)
    rotated = torch.cat([reference @ torch.linalg.qr(torch.randn(8, 8))[0], torch.zeros(32, 4)], dim=1)
    assert distance_matching(3.0 * rotated, reference).item() == pytest.approx(0.0, abs=1e-10)  # any width, scale
    nearly = distance_matching(reference + 0.1 * torch.randn(32, 8), reference).item()
    assert 0 < nearly < 0.2 * distance_matching(torch.randn(32, 8), reference).item()
    with pytest.raises(ConfigError, match="same at least 2 crops"):
        distance_matching(reference[:16], reference)


def test_the_initial_geometry_term_keeps_the_untrained_encoders_relative_distances(monaco_samples, tmp_path):
    """Trained with ``init_geometry_weight`` the place representation spaces held-out crops nearer to how the
    untrained encoder (the model's seeded start) spaces them than trained without it, in eval mode as the
    evaluation embeds (80 steps, so that batch norm's running statistics settle)."""
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    assert TrainConfig().digest() == TrainConfig(init_geometry_weight=0.0).digest()  # older runs keep theirs
    assert TrainConfig().digest() != TrainConfig(init_geometry_weight=1.0).digest()
    held_out = crops_tensor(reader, val_xy[:64], FAST["crop_px"], torch.device("cpu"))

    def drift(weight: float) -> float:
        steps = {**FAST, "steps_per_epoch": 40}
        config = TrainConfig(epochs=2, patience=10, init_geometry_weight=weight, mask_ratio=0.5, **steps)
        trained = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / str(weight)).model
        with torch.no_grad():
            start = untrained_encoder(config, reader.channels).eval().embed(held_out)
            return distance_matching(trained.eval().embed(held_out), start).item()

    assert drift(100.0) < 0.6 * drift(0.0)  # 0.011 against 0.028


def test_the_initial_encoder_runs_without_touching_what_the_patch_term_reads():
    """The frozen initial encoder is copied before the patch term hooks the encoder's stem: embedding other crops
    with it leaves the stem output the patch term decodes as the model's last forward pass left it."""
    torch.manual_seed(0)
    model = build_encoder("small_cnn", 16, 12)
    config = TrainConfig(crop_px=64, patch_recon_weight=1.0, init_geometry_weight=1.0)
    (_, patch), (_, geometry) = StepObjectives(config, model, 12, torch.device("cpu")).terms
    crops, others = (torch.randint(0, 256, (8, 12, 64, 64), dtype=torch.uint8) for _ in range(2))
    _, representation = model(crops, with_representation=True)
    before = next(patch(StepBatch.of(crops, config), representation)).item()
    next(geometry(StepBatch.of(others, config), representation))
    assert next(patch(StepBatch.of(crops, config), representation)).item() == before


def test_init_geometry_on_chooses_the_parts_whose_distances_the_term_keeps():
    """With ``init_geometry_on="context"`` the term matches the context part (the first ``context_dim`` columns)
    to the initial encoder's context part, with "place" the whole representation, with "both" each in a term of
    its own; the target is part of the config's identity only where a term keeps something."""
    on = {"crop_px": 64, "init_geometry_weight": 1.0}
    assert TrainConfig(**on).digest() == TrainConfig(init_geometry_on="place", **on).digest()
    assert TrainConfig(**on).digest() != TrainConfig(init_geometry_on="context", **on).digest()
    assert TrainConfig().digest() == TrainConfig(init_geometry_on="context").digest()  # no term to keep anything
    crops = torch.randint(0, 256, (8, 12, 64, 64), dtype=torch.uint8)
    for target in ("place", "context", "both"):
        torch.manual_seed(0)
        model = build_encoder("small_cnn", 16, 12)
        with torch.no_grad():
            initial = model.eval().embed(crops)
        config = TrainConfig(init_geometry_on=target, **on)
        ((_, geometry),) = StepObjectives(config, model, 12, torch.device("cpu")).terms
        with torch.no_grad():
            model.backbone.features[-1][0].weight.mul_(-1.5)  # a trained context: its distances moved
            representation = model.eval().embed(crops)
        losses = [loss.item() for loss in geometry(StepBatch.of(crops, config), representation)]
        context = model.context_dim
        whole, part = (distance_matching(representation[:, :w], initial[:, :w]).item() for w in (None, context))
        assert part > 0
        assert losses == {"place": [whole], "context": [part], "both": [whole, part]}[target], target


def test_init_geometry_context_weight_weighs_the_context_part_beside_the_whole():
    """Under ``init_geometry_on="both"`` the context part's loss enters the step's loss at
    ``init_geometry_context_weight``, the whole representation's at ``init_geometry_weight``; unset, both at the
    latter, and the config keeps the identity it had before the option."""
    on = {"crop_px": 64, "init_geometry_weight": 100.0, "init_geometry_on": "both"}
    assert TrainConfig(**on).digest() == TrainConfig(init_geometry_context_weight=None, **on).digest()
    assert TrainConfig(**on).digest() != TrainConfig(init_geometry_context_weight=30.0, **on).digest()
    crops = torch.randint(0, 256, (8, 12, 64, 64), dtype=torch.uint8)
    for context_weight, weights in ((None, (100.0, 100.0)), (30.0, (100.0, 30.0)), (0.0, (100.0, 0.0))):
        torch.manual_seed(0)
        model = build_encoder("small_cnn", 16, 12)
        config = TrainConfig(init_geometry_context_weight=context_weight, **on)
        objectives = StepObjectives(config, model, 12, torch.device("cpu"))
        ((term_weights, geometry),) = objectives.terms
        assert term_weights == weights
        with torch.no_grad():
            model.backbone.features[-1][0].weight.mul_(-1.5)
            representation = model.eval().embed(crops)
        batch = StepBatch.of(crops, config)
        whole, part = geometry(batch, representation)
        metric = torch.tensor(0.5)
        expected = 0.5 + weights[0] * whole.item() + weights[1] * part.item()
        assert objectives.loss(metric, batch, representation).item() == pytest.approx(expected, rel=1e-6)


def test_decorrelation_measures_redundant_dimensions_whatever_their_scale():
    torch.manual_seed(0)
    independent = torch.randn(4096, 16)
    assert decorrelation(independent).item() < 0.01
    redundant = independent.repeat(1, 2)  # every direction twice: one correlation of 1 per dimension
    assert decorrelation(redundant).item() == pytest.approx(1.0, abs=0.01)
    assert decorrelation(redundant * torch.logspace(-1, 2, 32)).item() == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ConfigError, match="at least 2"):
        decorrelation(independent[:1])


def trained_with(option: str, weights: tuple[float, ...], monaco_samples, tmp_path) -> dict:
    """``{weight: model}``: the same short training with the loss term ``option`` at each weight; a weight of 0
    leaves the config's identity as it was (the option is part of the digest only when set)."""
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    assert TrainConfig().digest() == TrainConfig(**{option: 0.0}).digest()
    models = {}
    for weight in weights:
        config = TrainConfig(epochs=4, patience=10, **{option: weight}, **FAST)
        models[weight] = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / str(weight)).model
    return models


def representation_redundancy(model, reader, xy: np.ndarray) -> float:
    crops = torch.from_numpy(reader.crops(xy[:, 0], xy[:, 1], 64)[0]).permute(0, 3, 1, 2)
    with torch.no_grad():
        return decorrelation(model.eval().embed(crops)).item()


def test_the_decorrelation_term_spreads_the_place_representation(monaco_samples, tmp_path):
    """Trained with the term, the place representation of held-back crops is less redundant than the same
    training's without it; a weight of 0 leaves the config's identity as it was."""
    reader, manifest = monaco_samples
    _, val_xy = _xy(manifest)
    models = trained_with("decorrelation_weight", (0.0, 0.2), monaco_samples, tmp_path)
    redundancy = {weight: representation_redundancy(model, reader, val_xy) for weight, model in models.items()}
    assert redundancy[0.2] < 0.5 * redundancy[0.0], redundancy  # measured: 14 against 63


def patch_decoding_loss(model, reader, xy: np.ndarray) -> float:
    """What the stem lost of the patches of the crops at ``xy``: the loss of a new patch decoder fitted to the
    trained stem's features (the stem fixed) on those crops."""
    crops = torch.from_numpy(reader.crops(xy[:, 0], xy[:, 1], 64)[0]).permute(0, 3, 1, 2)
    with torch.no_grad():
        stem = model.eval().backbone.stem(crops.float() / 255.0)
    torch.manual_seed(0)
    decoder = PatchReconstruction(stem.shape[1], crops.shape[1], 4)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(60):
        loss = decoder(stem, crops)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def test_patch_reconstruction_keeps_what_the_trained_stem_sees(monaco_samples, tmp_path):
    """Trained with each stem patch's pixels decoded from its features, the stem keeps more of held-back
    crops' patches than the same training's stem without it, and the model comes back without the hook that
    read the stem; a weight of 0 leaves the config's identity as it was."""
    reader, manifest = monaco_samples
    _, val_xy = _xy(manifest)
    models = trained_with("patch_recon_weight", (0.0, 10.0), monaco_samples, tmp_path)
    for model in models.values():
        assert not model.backbone.stem._forward_hooks  # the training's hook is off the model it returns
        pickle.dumps(model)  # as MLflow's model logging pickles it
    loss = {weight: patch_decoding_loss(model, reader, val_xy[:32]) for weight, model in models.items()}
    assert loss[10.0] < 0.9 * loss[0.0], loss


def test_composition_on_chooses_the_parts_of_the_representation_the_term_shapes(monaco_samples, tmp_path, monkeypatch):
    """With ``composition_on="context"`` the loop hands the term the context part of the place representation (its
    first ``context_dim`` columns, the last stage), with "place" the whole representation, with "both" each in a
    term of its own; the default target leaves the config's identity as it was."""
    import loc2vec.training.objectives as objectives

    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    term = {**FAST, "epochs": 1, "steps_per_epoch": 2, "composition_weight": 1.0}
    assert TrainConfig(**term).digest() == TrainConfig(composition_on="place", **term).digest()
    assert TrainConfig(**term).digest() != TrainConfig(composition_on="context", **term).digest()
    assert TrainConfig().digest() == TrainConfig(composition_on="context").digest()  # no term to shape anything
    shaped: dict[str, list[int]] = {}
    for target in ("place", "context", "both"):
        widths = shaped.setdefault(target, [])

        def spy(representation, *args, widths=widths):
            widths.append(representation.shape[1])
            return composition_neighbours(representation, *args)

        monkeypatch.setattr(objectives, "composition_neighbours", spy)
        config = TrainConfig(composition_on=target, **term)
        train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / target)
    assert shaped == {"place": [224, 224], "context": [128, 128], "both": [224, 128, 224, 128]}


def test_the_loop_drops_negatives_alike_to_their_anchor_by_the_disc_composition(monaco_samples, tmp_path, monkeypatch):
    """With ``negative_composition_l1`` every step marks the pairs of its crops whose centre composition (over
    ``composition_radius_px``) lies within that L1 distance, and the objective drops them as negatives."""
    import loc2vec.training.objectives as objectives

    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    marked: list[tuple[tuple[int, ...], float, int]] = []

    def spy(composition, max_l1):
        alike = alike_compositions(composition, max_l1)
        marked.append((tuple(composition.shape), max_l1, int(alike.sum()) - len(alike)))
        return alike

    monkeypatch.setattr(objectives, "alike_compositions", spy)
    config = TrainConfig(**{**FAST, "epochs": 1, "steps_per_epoch": 3, "negative_composition_l1": 0.2})
    result = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / "alike")
    assert [m[:2] for m in marked] == [((2 * config.batch_size, reader.channels), 0.2)] * 3
    assert all(pairs > 0 for *_, pairs in marked)  # Monaco's crops: some far places hold the same at their centre
    assert np.isfinite(result.history[0].train_loss)


def test_reconstruction_from_the_context_decodes_the_crops_from_the_context_part_alone(monaco_samples, tmp_path):
    """With ``recon_from="context"`` the reconstruction's decoder reads the context part of the representation
    (the last stage) and learns to decode held-back crops' channel cells from it; by default it reads the whole
    place representation, and the default source leaves the config's identity as it was."""
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    recon = dict(epochs=4, patience=10, recon_weight=10.0, **FAST)
    assert TrainConfig(**recon).digest() == TrainConfig(recon_from="place", **recon).digest()
    assert TrainConfig(**recon).digest() != TrainConfig(recon_from="context", **recon).digest()
    assert TrainConfig().digest() == TrainConfig(recon_from="context").digest()  # no reconstruction to decode
    crops = torch.from_numpy(reader.crops(val_xy[:256, 0], val_xy[:256, 1], 64)[0]).permute(0, 3, 1, 2)
    target = channel_cells(crops, 4)
    floor = float(torch.nn.functional.binary_cross_entropy(target, target))  # the targets' own entropy
    for source in ("place", "context"):
        config = TrainConfig(recon_from=source, **recon)
        model = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / source).model.eval()
        width = model.context_dim if source == "context" else model.representation_dim
        assert (model.context_dim, model.representation_dim) == (128, 224)
        torch.manual_seed(0)
        decoder = ReconstructionObjective(width, reader.channels, 4)
        untrained_loss = float(decoder(model.embed(crops)[:, :width], target).detach()) - floor
        decoder.load_state_dict(load_checkpoint(tmp_path / source / "last.pt")["reconstruction"])
        with torch.no_grad():
            loss = float(decoder(model.embed(crops)[:, :width], target)) - floor
        assert loss < 0.95 * untrained_loss, (source, loss, untrained_loss)


def test_disc_composition_reads_each_channel_over_the_disc_at_the_centre():
    rows, cols = torch.meshgrid(torch.arange(64) - 31.5, torch.arange(64) - 31.5, indexing="ij")
    inside = rows**2 + cols**2 <= 8**2
    crops = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    crops[0, 0][inside] = 255  # channel 0 fills the disc exactly
    crops[0, 1][~inside] = 255  # channel 1 everything around it
    crops[1, 2][:, :32] = 255  # channel 2 the left half of the second crop
    composition = disc_composition(crops, 8.0)
    assert torch.allclose(composition[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(composition[1], torch.tensor([0.0, 0.0, 0.5]))
    assert disc_composition(crops, 16.0)[0, 0].item() == pytest.approx(
        inside.sum().item() / (rows**2 + cols**2 <= 256).sum().item()
    )
    with pytest.raises(ConfigError, match="holds no pixel"):
        disc_composition(crops, 0.5)  # an even crop's centre lies between pixels, 0.71 px from the nearest


def test_composition_neighbours_rewards_a_representation_that_ranks_places_as_their_centres():
    torch.manual_seed(0)
    composition = torch.rand(64, 12)
    aligned = torch.cat([composition - composition.mean(dim=0), torch.zeros(64, 20)], dim=1)
    shuffled = aligned[torch.randperm(64)]
    target = torch.softmax(
        (-torch.cdist(composition, composition, p=1) / 0.1).masked_fill(torch.eye(64, dtype=torch.bool), -torch.inf), 1
    )
    entropy = float(-(target * target.clamp_min(1e-30).log()).sum(dim=1).mean())
    loss = {
        name: composition_neighbours(z, composition, 0.05, 0.1).item()
        for name, z in [("aligned", aligned), ("shuffled", shuffled)]
    }
    assert entropy < loss["aligned"] < loss["shuffled"], (entropy, loss)
    same = torch.zeros(2, 12)  # two crops with one centre: each the other's only neighbour, whatever the scale
    assert composition_neighbours(torch.randn(2, 8), same, 0.1, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        composition_neighbours(aligned[:1], composition[:1], 0.1, 0.1)


def test_the_composition_term_trains_the_place_representation(monaco_samples, tmp_path):
    """The term's gradient reaches the place representation: a few steps on it alone bring real crops' neighbours
    closer to their neighbours by what lies at their centres; the training loop adds it to the loss; a weight of 0
    leaves the config's identity as it was."""
    reader, manifest = monaco_samples
    train_xy, val_xy = _xy(manifest)
    assert TrainConfig().digest() == TrainConfig(composition_weight=0.0, composition_radius_px=8.0).digest()
    assert TrainConfig().digest() != TrainConfig(composition_weight=1.0).digest()
    crops = torch.from_numpy(reader.crops(val_xy[:128, 0], val_xy[:128, 1], 64)[0]).permute(0, 3, 1, 2)
    composition = disc_composition(crops, 16.0)
    torch.manual_seed(0)
    model = build_encoder("small_cnn", 16, reader.channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = composition_neighbours(model(crops, with_representation=True)[1], composition, 0.1, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    first_epoch = {}
    for weight in (0.0, 1.0):
        config = TrainConfig(epochs=1, composition_weight=weight, **FAST)
        run = train(config, reader, train_xy, val_xy, select_device("cpu"), tmp_path / str(weight))
        first_epoch[weight] = run.history[0].train_loss
    # the term is at least the entropy of its target over a batch of 64 real crops, well above 1
    assert first_epoch[1.0] - first_epoch[0.0] > 1.0, first_epoch
