"""One model over several regions: each region's own mosaic and split, anchors drawn across them by weight.

Every region brings what a single-region run would train on (its mosaic and its ``SamplesManifest``, split
with its own leak buffer); each is checked as a single-region run checks it (the split's leak buffer covers
the training positives and crops, no test anchor within the leak distance of a train or val anchor) before
anything is logged or trained. Sampling: :mod:`loc2vec.data.multiregion`. The run and the registered
version record every region (name, weight, mosaic, features and OSM versions, split).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loc2vec import model_card, tracking
from loc2vec.data.chunked import open_reader
from loc2vec.data.locations import SamplesManifest
from loc2vec.data.multiregion import (
    MultiRegionBatches,
    RegionDataError,
    RegionTriplets,
    check_region_data,
    region_shares,
    region_val_triplets,
    regions_digest,
)
from loc2vec.data.samples import leakage_report
from loc2vec.errors import ConfigError
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import DeviceSpec
from loc2vec.training.loop import EpochMetrics, TrainResult, fit
from loc2vec.training.run import (
    LoggedTraining,
    ModelManifest,
    TrainingData,
    check_split_fits,
    triplet_picture,
)

REGIONS_SECTION = "## Regions"


@dataclass(frozen=True)
class RegionInput:
    """One region's inputs to multi-region training and their versions (its lineage in the model)."""

    name: str
    weight: float
    samples: SamplesManifest
    mosaic_path: str
    mosaic_version: str
    features_version: str
    osm_sha256: str
    osm_bbox: str = ""
    osm_sequence: int | None = None
    osm_timestamp: str | None = None

    def record(self) -> dict:
        """What the model records of the region."""
        split = self.samples.split_spec()
        return {
            "name": self.name,
            "weight": self.weight,
            "mosaic_version": self.mosaic_version,
            "features_version": self.features_version,
            "osm_sha256": self.osm_sha256,
            "osm_bbox": self.osm_bbox,
            "osm_sequence": self.osm_sequence,
            "osm_timestamp": self.osm_timestamp,
            "samples_version": Path(self.samples.path).stem,
            "split_digest": split.digest(),
            "n_train": int(self.samples.counts.get("train", 0)),
            "n_val": int(self.samples.counts.get("val", 0)),
        }

    def to_dict(self) -> dict:
        """Every field, the split's manifest as a dict (JSON-serialisable; ``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RegionInput:
        return cls(**{**values, "samples": SamplesManifest(**values["samples"])})


def region_input(
    name: str, weight: float, samples: SamplesManifest, mosaic_path: str, osm_bbox: str = ""
) -> RegionInput:
    """A region's training inputs from its split and the mosaic version it was cut from, the OSM lineage read
    from the mosaic's own attributes (so it is the lineage of exactly those pixels)."""
    from loc2vec.store.mosaic import open_mosaic

    attrs = open_mosaic(mosaic_path).attrs
    version = str(attrs.get("mosaic_version") or Path(mosaic_path).name.removesuffix(".zarr"))
    if version != samples.mosaic_version:
        raise RegionDataError(name, f"its split was cut from mosaic {samples.mosaic_version}, not {version}")
    return RegionInput(
        name=name,
        weight=weight,
        samples=samples,
        mosaic_path=str(mosaic_path),
        mosaic_version=version,
        features_version=str(attrs["features_version"]),
        osm_sha256=str(attrs["osm_sha256"]),
        osm_bbox=osm_bbox,
        osm_sequence=attrs.get("osm_sequence"),
        osm_timestamp=attrs.get("osm_timestamp"),
    )


def common_crop_px(regions: list[RegionInput]) -> int:
    """The crop edge every region was split for (one model trains one crop size); regions split for different
    edges are refused, naming them."""
    edges = {r.name: int(r.samples.spec["crop_px"]) for r in regions}
    if not edges:
        raise ConfigError("no region to train on")
    if len(set(edges.values())) > 1:
        found = ", ".join(f"{name}: {edge} px" for name, edge in edges.items())
        raise ConfigError(f"the regions were split for different crop edges ({found}): split them for one crop_px")
    return next(iter(edges.values()))


def model_dir_name(config_digest: str, regions: list[RegionInput]) -> str:
    """One model directory per (regions, weights, splits, config): a checkpoint never resumes on other data."""
    key = json.dumps([[r.name, r.weight, Path(r.samples.path).stem] for r in regions])
    return f"regions-{hashlib.sha256(key.encode()).hexdigest()[:10]}-{config_digest}"


def check_region_split(config: TrainConfig, region: RegionInput) -> None:
    """The checks a single-region run makes of its split, naming the region: the leak buffer covers the
    training positives and crops, and no test anchor lies within the leak distance of a train or val anchor."""
    try:
        check_split_fits(config, region.samples)
    except ConfigError as exc:
        raise RegionDataError(region.name, str(exc)) from exc
    report = leakage_report(region.samples.read(), region.samples.leak_distance_m)
    if not report.passed:
        raise RegionDataError(
            region.name,
            f"split leakage: {report.violations} test anchors within {report.leak_distance_m:.0f} m of a train or "
            "val anchor; re-run its sample_locations",
        )


def region_triplets(config: TrainConfig, regions: list[RegionInput]) -> list[RegionTriplets]:
    """Every region checked and opened for training (mosaic reader, train and val anchors)."""
    if not regions:
        raise ConfigError("no region to train on")
    for region in regions:
        if not (np.isfinite(region.weight) and region.weight > 0):
            raise RegionDataError(region.name, f"weight must be a positive number, got {region.weight!r}")
        check_region_split(config, region)
    data = [
        RegionTriplets(
            r.name,
            float(r.weight),
            open_reader(r.mosaic_path, config.reader_config()),
            r.samples.xy("train"),
            r.samples.xy("val"),
        )
        for r in regions
    ]
    check_region_data(data)
    return data


def train_regions(config: TrainConfig, data: list[RegionTriplets], device: DeviceSpec, checkpoint_dir, **callbacks):
    """Train one encoder over the regions (``loop.fit``: checkpointed, resumable, early-stopped)."""
    spec = config.triplet_spec()
    val_set = region_val_triplets(data, spec, config.val_triplets, config.seed)

    def batches(epoch: int, rank: int, world: int) -> MultiRegionBatches:
        return MultiRegionBatches(data, spec, config.seed, epoch, config.steps_per_epoch, rank=rank, world=world)

    channels = data[0].reader.channels
    return fit(config, channels, batches, val_set, regions_digest(data), device, checkpoint_dir, **callbacks)


def regions_table(records: list[dict], shares) -> str:
    """The version description's table of regions."""
    rows = [
        (
            r["name"],
            f"{r['weight']:g} ({share:.0%})",
            f"`{r['mosaic_version']}`",
            f"`{r['features_version']}`",
            f"`{r['osm_sha256'][:16]}`",
            f"`{r['samples_version']}`",
            f"{r['n_train']} / {r['n_val']}",
        )
        for r, share in zip(records, shares, strict=True)
    ]
    header = ["region", "weight (share)", "mosaic", "features", "OSM SHA-256", "split", "train / val"]
    return model_card.table(header, rows)


def region_tags(records: list[dict]) -> dict[str, str]:
    """Run and version tags: the regions' names, their records as JSON, and ``region.<name>.<key>`` per value."""
    tags = {
        "region": "+".join(r["name"] for r in records),
        "regions": ",".join(r["name"] for r in records),
        "regions_json": json.dumps(records, sort_keys=True),
    }
    for r in records:
        for key in ("weight", "mosaic_version", "features_version", "osm_sha256", "samples_version", "split_digest"):
            tags[f"region.{r['name']}.{key}"] = str(r[key])
    return tags


def train_and_register_regions(
    config: TrainConfig,
    regions: list[RegionInput],
    schema_json: str,
    device: DeviceSpec,
    out_dir: str | Path,
    tracking_uri: str,
    lineage_tags: dict[str, str],
    model_name: str = tracking.MODEL_NAME,
    experiment: str = tracking.EXPERIMENT,
    log=print,
    progress=None,
) -> ModelManifest:
    """Check every region, train one encoder over them and register it, recording every region.

    A region that cannot be trained on raises ``RegionDataError`` naming it before MLflow is touched."""
    data = region_triplets(config, regions)  # every check first: a refused set of regions registers nothing
    records = [r.record() for r in regions]
    shares = region_shares(data)
    experiment_id = tracking.setup(tracking_uri, experiment, artifact_root=str(Path(out_dir).parent / "mlruns"))
    out = Path(out_dir)
    tags = {**lineage_tags, **region_tags(records)}
    pictures = {
        f"sample_triplets_{d.name}.png": (lambda d=d: triplet_picture(d.reader, d.train_xy, config).png) for d in data
    }
    run = LoggedTraining(
        config=config,
        tags=tags,
        region=f"{len(regions)} regions: {', '.join(r.name for r in regions)}",
        reader=data[0].reader,
        n_train=sum(len(d.train_xy) for d in data),
        n_val=sum(len(d.val_xy) for d in data),
        pictures=pictures,
        extra_json={"regions.json": records},
        sections=[(REGIONS_SECTION, regions_table(records, shares))],
    )

    def train_all(on_epoch: Callable[[EpochMetrics], None], on_resume: Callable[[int], None]) -> TrainResult:
        return train_regions(config, data, device, out / "checkpoints", on_epoch=on_epoch, on_resume=on_resume)

    lineage = TrainingData(
        mosaic_path="+".join(r.mosaic_path for r in regions),
        mosaic_version="+".join(r.mosaic_version for r in regions),
        samples_path="+".join(r.samples.path for r in regions),
        osm_sha256="+".join(r.osm_sha256 for r in regions),
        regions=records,
    )
    return run.execute(
        train_all, lineage, schema_json, device, out, tracking_uri, experiment_id, model_name, log, progress
    )
