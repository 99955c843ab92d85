"""One model over several regions: anchors by weight, positives inside their region, every region recorded."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from loc2vec.data.chunked import open_reader
from loc2vec.data.locations import build_sample_locations
from loc2vec.data.multiregion import MultiRegionBatches, RegionDataError, RegionTriplets, geocentric_m
from loc2vec.data.samples import SplitSpec
from loc2vec.io import write_geoparquet
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import select_device
from loc2vec.training.multi import RegionInput, train_and_register_regions
from tests.conftest import HELSINKI, KOTKA

FAST = dict(crop_px=64, batch_size=16, steps_per_epoch=4, val_triplets=16, r_neg_m=300.0, epochs=1, seed=1)


SPLIT = SplitSpec(spacing_m=40.0, crop_px=64, seed=0)


def _region(root, name, pbf, spec=SPLIT):
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import MosaicSpec, render_mosaic
    from loc2vec.schema import load_schema

    features, _ = build_feature_layers(pbf, load_schema(), root / name / "features")
    mosaic = render_mosaic(features, MosaicSpec(resolution=3.0), root / name / "mosaic")
    samples, _ = build_sample_locations(open_reader(mosaic.path), spec, mosaic.version, root / name / "samples")
    return RegionInput(name, 1.0, samples, mosaic.path, mosaic.version, features.version, features.osm_sha256)


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """Kotka (Karhula) and Helsinki centre: features, a 3 m/px mosaic and a split each (~2 s)."""
    root = tmp_path_factory.mktemp("regions")
    return [_region(root, "kotka-karhula", KOTKA), _region(root, "helsinki-centre", HELSINKI)]


def _triplets(inputs, weights) -> list[RegionTriplets]:
    return [
        RegionTriplets(r.name, w, open_reader(r.mosaic_path), r.samples.xy("train"), r.samples.xy("val"))
        for r, w in zip(inputs, weights, strict=True)
    ]


def _shares(batches: MultiRegionBatches, steps: int) -> np.ndarray:
    counts = np.zeros(len(batches.regions))
    for k in range(steps):
        for r, idx in batches.plan(k):
            counts[r] += len(idx)
    return counts / counts.sum()


def test_anchors_are_drawn_from_each_region_by_weight_seeded(regions):
    spec = TrainConfig(**{**FAST, "batch_size": 32}).triplet_spec()
    data = _triplets(regions, [3.0, 1.0])
    batches = MultiRegionBatches(data, spec, seed=5, epoch=0, steps=60)
    shares = _shares(batches, 60)  # 1,920 anchors: a share's standard error is 0.01
    assert abs(shares[0] - 0.75) < 0.04 and abs(shares[1] - 0.25) < 0.04
    even = _shares(MultiRegionBatches(_triplets(regions, [1.0, 1.0]), spec, seed=5, epoch=0, steps=60), 60)
    assert abs(even[0] - 0.5) < 0.04
    # reproducible: the same (seed, epoch, step) gives the same anchors and crops; another seed other anchors
    again = MultiRegionBatches(_triplets(regions, [3.0, 1.0]), spec, seed=5, epoch=0, steps=60)
    for k in (0, 7):
        assert all(
            r1 == r2 and np.array_equal(i1, i2)
            for (r1, i1), (r2, i2) in zip(batches.plan(k), again.plan(k), strict=True)
        )
        for x, y in zip(batches.batch(k), again.batch(k), strict=True):
            np.testing.assert_array_equal(x, y)
    other = MultiRegionBatches(data, spec, seed=6, epoch=0, steps=60)
    assert any(not np.array_equal(i1, i2) for (_, i1), (_, i2) in zip(batches.plan(0), other.plan(0), strict=False))


def test_the_neighbourhood_sampler_draws_each_region_from_its_own_stream_by_weight(regions):
    """Across regions, the neighbourhood sampler keeps the weighted region mix of uniform draws (the same counts
    per batch), walks each region's anchors in its own neighbourhood stream (every train anchor once per pass,
    a few neighbourhoods at a time) and continues that stream across epochs and after a restart."""
    config = TrainConfig(**{**FAST, "batch_size": 32}, sampler="neighbourhood", neighbourhood_px=128)
    spec = config.triplet_spec()
    data = _triplets(regions, [3.0, 1.0])
    steps, epochs = 10, 4
    uniform = MultiRegionBatches(data, TrainConfig(**{**FAST, "batch_size": 32}).triplet_spec(), 5, 0, steps)
    first = MultiRegionBatches(data, spec, seed=5, epoch=0, steps=steps)
    for k in range(steps):
        counts = {r: len(idx) for r, idx in first.plan(k)}
        assert counts == {r: len(idx) for r, idx in uniform.plan(k)}
    streams = {0: [], 1: []}
    for epoch in range(epochs):
        batches = MultiRegionBatches(data, spec, seed=5, epoch=epoch, steps=steps)
        restarted = MultiRegionBatches(_triplets(regions, [3.0, 1.0]), spec, seed=5, epoch=epoch, steps=steps)
        for k in range(steps):
            plan = batches.plan(k)
            assert [(r, i.tolist()) for r, i in plan] == [(r, i.tolist()) for r, i in restarted.plan(k)]
            for r, idx in plan:
                streams[r].extend(idx.tolist())
    helsinki = len(data[1].train_xy)
    assert len(streams[1]) >= helsinki  # a whole pass over Helsinki's anchors: each exactly once
    assert sorted(streams[1][:helsinki]) == list(range(helsinki))
    # batches stay local: the anchors Kotka gives one batch lie in few of its neighbourhoods
    cols, rows = data[0].reader.grid.xy_to_pixel(data[0].train_xy[:, 0], data[0].train_xy[:, 1])
    cell = (np.asarray(rows) // 128).astype(int) * 1000 + (np.asarray(cols) // 128).astype(int)
    per_batch = [len(set(cell[idx].tolist())) for r, idx in first.plan(0) if r == 0]
    spread = len(set(cell[np.random.default_rng(0).choice(len(cell), 24, replace=False)].tolist()))
    assert per_batch[0] <= 2 * spec.shuffle_neighbourhoods < spread
    # the crops are the region's own train anchors
    known = {tuple(p) for r in data for p in geocentric_m(r.reader, r.train_xy).astype(np.float32).tolist()}
    assert all(tuple(p) in known for p in first.batch(3)[2].tolist())


class _Recording:
    """A reader that records the centres (pixels) of every crop it cuts."""

    def __init__(self, reader):
        self._reader, self.centres = reader, []

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def crops_px(self, cols, rows, size, angles=None):
        self.centres.append(np.stack([np.asarray(cols, float), np.asarray(rows, float)], axis=1))
        return self._reader.crops_px(cols, rows, size, angles)


def test_positives_come_from_the_anchors_own_region_and_mosaic(regions):
    config = TrainConfig(**FAST)
    spec = config.triplet_spec()
    data = [replace(d, reader=_Recording(d.reader)) for d in _triplets(regions, [1.0, 1.0])]
    batches = MultiRegionBatches(data, spec, seed=0, epoch=0, steps=5)
    reach_m = spec.max_positive_m + spec.max_shift_px * 3.0 * np.sqrt(2)
    for step in range(5):
        for d in data:
            d.reader.centres.clear()
        anchors, positives, locations = batches.batch(step)
        plan = batches.plan(step)
        assert len(anchors) == len(positives) == len(locations) == spec.batch_size
        for r, idx in plan:
            reader = data[r].reader
            assert len(reader.centres) == 2  # the anchors' crops and their positives', both from this region's mosaic
            anchor_px = np.stack(reader.grid.xy_to_pixel(*data[r].train_xy[idx].T), axis=1)
            for centres in reader.centres:
                assert len(centres) == len(idx)
                assert (np.hypot(*(centres - anchor_px).T) * reader.grid.resolution <= reach_m + 1e-6).all()
        for r in {0, 1} - {p[0] for p in plan}:
            assert not data[r].reader.centres  # a region without anchors in the batch cuts nothing
        # locations: one geocentric frame, so pairs across regions are far apart and pairs inside keep their distance
        sizes = [len(idx) for _, idx in plan]
        if len(sizes) == 2:
            gap = np.linalg.norm(locations[: sizes[0], None] - locations[None, sizes[0] :], axis=2)
            assert gap.min() > 50_000  # Karhula and Helsinki are ~100 km apart
    xy = data[0].train_xy[:20]
    ground = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    chord = np.linalg.norm(geocentric_m(data[0].reader, xy)[:, None] - geocentric_m(data[0].reader, xy)[None], axis=2)
    np.testing.assert_allclose(chord, ground, rtol=1e-3, atol=0.5)  # UTM's scale factor (< 0.04 % here)


def test_the_registered_model_records_every_region_and_its_data_versions(regions, tmp_path):
    inputs = [replace(regions[0], weight=3.0), replace(regions[1], weight=1.0)]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    manifest = train_and_register_regions(
        TrainConfig(**FAST),
        inputs,
        '{"channels": []}',
        select_device("cpu"),
        tmp_path / "models" / "m",
        uri,
        {"git_commit": "abc"},
        log=lambda _: None,
    )
    assert [r["name"] for r in manifest.regions] == ["kotka-karhula", "helsinki-centre"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(manifest.model_name, manifest.model_version)
    tags = version.tags
    assert tags["region"] == "kotka-karhula+helsinki-centre"
    for r in inputs:
        assert tags[f"region.{r.name}.mosaic_version"] == r.mosaic_version
        assert tags[f"region.{r.name}.features_version"] == r.features_version
        assert tags[f"region.{r.name}.osm_sha256"] == r.osm_sha256
        assert tags[f"region.{r.name}.split_digest"] == r.samples.split_spec().digest()
        assert f"`{r.mosaic_version}`" in version.description
    assert tags["region.kotka-karhula.weight"] == "3.0"
    assert "## Regions" in version.description and "3 (75%)" in version.description
    run = client.get_run(manifest.run_id)
    assert run.data.params["n_train_anchors"] == str(sum(r.samples.counts["train"] for r in inputs))
    artifacts = {a.path for a in client.list_artifacts(manifest.run_id)}
    assert {"regions.json", "sample_triplets_kotka-karhula.png", "sample_triplets_helsinki-centre.png"} <= artifacts


def _leaky(region: RegionInput, tmp_path) -> RegionInput:
    """The region with a buffer anchor (next to a test block) relabelled as training ground."""
    frame = region.samples.read()
    first = frame.index[frame["split"] == "buffer"][0]
    frame.loc[first, "split"] = "train"
    path = write_geoparquet(frame, tmp_path / "leaky.parquet")
    return replace(region, samples=replace(region.samples, path=str(path)))


def test_bad_regions_fail_naming_the_region_and_nothing_is_registered(regions, tmp_path):
    kotka, helsinki = regions
    narrow = replace(
        helsinki, samples=replace(helsinki.samples, spec={**helsinki.samples.spec, "max_positive_m": 100.0})
    )
    empty_val = replace(helsinki, samples=replace(helsinki.samples, path=str(_no_val(helsinki, tmp_path))))
    cases = [
        ([kotka, replace(helsinki, weight=0.0)], "'helsinki-centre': weight must be a positive number"),
        ([replace(kotka, weight=-1.0), helsinki], "'kotka-karhula': weight must be a positive number"),
        ([kotka, narrow], "'helsinki-centre'.*leak buffer"),
        ([_leaky(kotka, tmp_path), helsinki], "'kotka-karhula': split leakage"),
        ([kotka, empty_val], "'helsinki-centre': its split has 0 val anchors"),
    ]
    for inputs, message in cases:
        with pytest.raises(RegionDataError, match=message):
            train_and_register_regions(
                TrainConfig(**FAST),
                inputs,
                "{}",
                select_device("cpu"),
                tmp_path / "models" / "m",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
                {},
                log=lambda _: None,
            )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()


def _no_val(region: RegionInput, tmp_path):
    frame = region.samples.read()
    frame.loc[frame["split"] == "val", "split"] = "buffer"
    return write_geoparquet(frame, tmp_path / "no-val.parquet")


def test_train_regions_refuses_an_unknown_region_or_a_bad_weight_before_any_work(tmp_path, capsys):
    from pipelines.cli import main

    catalog = tmp_path / "regions.toml"
    catalog.write_text(f'[[region]]\nname = "kotka-karhula"\nextract = "{KOTKA}"\n')
    out = tmp_path / "out"
    base = ["train-regions", "--catalog", str(catalog), "--out", str(out)]
    assert main([*base, "--regions", "kotka-karhula,atlantis"]) == 1
    assert "no region 'atlantis'" in capsys.readouterr().err
    assert main([*base, "--regions", "kotka-karhula", "--weights", "0"]) == 1
    assert "region 'kotka-karhula': weight must be a positive number" in capsys.readouterr().err
    assert main([*base, "--regions", "kotka-karhula", "--weights", "1,2"]) == 1
    assert "--weights has 2 values for 1 regions" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_train_regions_prepares_each_region_and_registers_one_model(tmp_path):
    """The command end to end on two one-block regions (~70 s: one process prepares both, then 1 short epoch)."""
    import json

    from pipelines.cli import main

    catalog = tmp_path / "regions.toml"
    catalog.write_text(
        f'[[region]]\nname = "helsinki-centre"\nextract = "{HELSINKI}"\n\n'
        f'[[region]]\nname = "kotka-karhula"\nextract = "{KOTKA}"\nweight = 3.0\n'
    )
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"steps_per_epoch": 4, "batch_size": 16, "val_triplets": 16, "r_neg_m": 300.0}))
    out = tmp_path / "out"
    args = ["train-regions", "--regions", "helsinki-centre,kotka-karhula", "--catalog", str(catalog), "--out", str(out)]
    assert main([*args, "--epochs", "1", "--crop-px", "64", "--train-config", str(config)]) == 0
    model = json.loads((out / "model.json").read_text())
    assert [(r["name"], r["weight"]) for r in model["regions"]] == [("helsinki-centre", 1.0), ("kotka-karhula", 3.0)]
    uri = model["tracking_uri"]
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(model["model_name"], "1").tags
    for r in model["regions"]:
        manifest = json.loads(
            next((out / "regions" / r["name"] / "features").glob(f"{r['features_version']}*/manifest.json")).read_text()
        )
        assert manifest["osm_sha256"] == r["osm_sha256"] == tags[f"region.{r['name']}.osm_sha256"]
        assert (out / "regions" / r["name"] / "mosaic" / f"{r['mosaic_version']}.zarr").is_dir()
        assert tags[f"region.{r['name']}.mosaic_version"] == r["mosaic_version"]
        frame = pd.read_parquet(next((out / "regions" / r["name"] / "samples").glob(f"{r['samples_version']}.parquet")))
        assert (frame["split"] == "train").sum() == r["n_train"]
