"""The training stage: train on the mosaic's train anchors, log everything to MLflow, register a version."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from loc2vec import __version__, tracking
from loc2vec.data.crops import CropReader
from loc2vec.data.locations import SamplesManifest
from loc2vec.data.triplets import fixed_triplets
from loc2vec.errors import ConfigError
from loc2vec.models.encoders import load_encoder, save_encoder
from loc2vec.preview import composite, png_bytes
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import DeviceSpec
from loc2vec.training.loop import EpochMetrics, train


@dataclass(frozen=True)
class ModelManifest:
    """A trained, registered encoder and where it came from."""

    weights_path: str
    config: dict
    model_name: str
    model_version: str
    model_uri: str
    run_id: str
    tracking_uri: str
    experiment_id: str
    mosaic_path: str
    mosaic_version: str
    samples_path: str
    osm_sha256: str
    best_epoch: int
    history: list[dict]
    representation_dim: int | None = None  # None in manifests stored before it was recorded

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)

    def load(self) -> torch.nn.Module:
        return load_encoder(self.weights_path)


def triplet_picture(reader: CropReader, xy: np.ndarray, config: TrainConfig, n: int = 4) -> bytes:
    """Rows of anchor | positive | negative composites, for the run's artifacts."""
    a, p, neg = fixed_triplets(reader, xy, config.triplet_spec(), n, config.seed + 1)
    rows = [np.concatenate([composite(x[i].transpose(2, 0, 1)) for x in (a, p, neg)], axis=1) for i in range(n)]
    return png_bytes(np.concatenate(rows, axis=0))


def check_split_fits(config: TrainConfig, samples: SamplesManifest) -> None:
    """Refuse training whose positives reach further than the split's leak buffer allows."""
    split = samples.split_spec()
    if config.max_positive_m > split.max_positive_m or config.crop_px > split.crop_px:
        raise ConfigError(
            f"training positives reach {config.max_positive_m:g} m with {config.crop_px}-px crops, but the split's "
            f"leak buffer was built for max_positive_m={split.max_positive_m:g} m and {split.crop_px}-px crops: "
            "training crops could overlap test crops. Re-run sample_locations with max_positive_m (and crop_px) at "
            "least as large."
        )


def train_and_register(
    config: TrainConfig,
    samples: SamplesManifest,
    mosaic_path: str,
    mosaic_version: str,
    osm_sha256: str,
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
    """Train (resuming from ``out_dir/checkpoints`` if a run was interrupted) and register the model;
    ``progress(epochs_done, epochs)`` is called after every epoch."""
    import mlflow

    check_split_fits(config, samples)
    experiment_id = tracking.setup(tracking_uri, experiment, artifact_root=str(Path(out_dir).parent / "mlruns"))
    reader = CropReader.from_store(mosaic_path)
    train_xy, val_xy = samples.xy("train"), samples.xy("val")
    out = Path(out_dir)
    tags = {**lineage_tags, "mosaic_version": mosaic_version, "osm_sha256": osm_sha256}
    run_tags = {**tags, **tracking.run_owner_tags()}
    with tracking.using(tracking_uri), mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as run:
        mlflow.log_params({**config.to_dict(), "device": device.describe(), "loc2vec_version": __version__})
        mlflow.log_params(device.reproducibility())
        mlflow.log_params({"n_train_anchors": len(train_xy), "n_val_anchors": len(val_xy)})
        tracking.log_json(config.to_dict(), "config.json")
        mlflow.log_text(schema_json, "channel_schema.json")
        mlflow.log_image(np.asarray(_decode(triplet_picture(reader, train_xy, config))), "sample_triplets.png")
        started = time.perf_counter()

        def on_epoch(m: EpochMetrics) -> None:
            mlflow.log_metrics({k: v for k, v in asdict(m).items() if k != "epoch"}, step=m.epoch)
            log(
                f"epoch {m.epoch}: train {m.train_loss:.4f} val {m.val_loss:.4f} "
                f"acc {m.val_triplet_accuracy:.3f} {m.samples_per_s:.0f} samples/s"
            )
            if progress is not None:
                progress(m.epoch + 1, config.epochs)

        def on_resume(epoch: int) -> None:
            log(f"resuming from the checkpoint in {out / 'checkpoints'}: epochs 0-{epoch - 1} are not trained again")
            mlflow.set_tag("resumed_from_epoch", str(epoch))

        if progress is not None:
            progress(0, config.epochs)
        result = train(
            config, reader, train_xy, val_xy, device, out / "checkpoints", on_epoch=on_epoch, on_resume=on_resume
        )
        for m in result.history[: result.resumed_from_epoch or 0]:  # epochs trained before the crash
            mlflow.log_metrics({k: v for k, v in asdict(m).items() if k != "epoch"}, step=m.epoch)
        mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": time.perf_counter() - started})
        mlflow.log_param("representation_dim", result.model.representation_dim)
        weights = out / "model.pt"
        save_encoder(result.model, weights)
        example = np.zeros((1, reader.channels, config.crop_px, config.crop_px), dtype=np.uint8)
        version, uri = tracking.register_torch_model(result.model, model_name, tags, example, tracking_uri)
        return ModelManifest(
            weights_path=str(weights),
            config=config.to_dict(),
            model_name=model_name,
            model_version=version,
            model_uri=uri,
            run_id=run.info.run_id,
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            mosaic_path=mosaic_path,
            mosaic_version=mosaic_version,
            samples_path=samples.path,
            osm_sha256=osm_sha256,
            best_epoch=result.best_epoch,
            history=[asdict(h) for h in result.history],
            representation_dim=result.model.representation_dim,
        )


def _decode(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))
