"""The training stage: train on the mosaic's train anchors, log everything to MLflow, register a version."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from loc2vec import __version__, model_card, tracking
from loc2vec.data.chunked import open_reader
from loc2vec.data.crops import CropGeometry
from loc2vec.data.locations import SamplesManifest
from loc2vec.data.triplets import fixed_triplets_with_distances
from loc2vec.errors import ConfigError
from loc2vec.models.encoders import load_encoder, save_encoder
from loc2vec.preview import composite, png_bytes
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import DeviceSpec
from loc2vec.training.loop import EpochMetrics, TrainResult, train


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
    # a model trained on several regions: one record per region (name, weight, mosaic/features/OSM versions,
    # split); the single mosaic and samples fields above then join the regions' values with "+"
    regions: list[dict] | None = None

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)

    def load(self) -> torch.nn.Module:
        return load_encoder(self.weights_path)


@dataclass(frozen=True)
class TrainingData:
    """Where a training's data came from, as its manifest records it (several regions: values joined with "+")."""

    mosaic_path: str
    mosaic_version: str
    samples_path: str
    osm_sha256: str
    regions: list[dict] | None = None


@dataclass(frozen=True)
class TripletPicture:
    """A labelled picture of sample triplets and the labels drawn on it (column headers, then row captions)."""

    png: bytes
    labels: list[str]
    positive_m: list[float]
    negative_m: list[float]


def triplet_picture(reader: CropGeometry, xy: np.ndarray, config: TrainConfig, n: int = 4) -> TripletPicture:
    """Rows of anchor | positive | negative composites under column labels, each positive and negative
    captioned with its ground distance from the anchor (m), for the run's artifacts."""
    from PIL import Image, ImageDraw, ImageFont

    a, p, neg, pos_m, neg_m = fixed_triplets_with_distances(reader, xy, config.triplet_spec(), n, config.seed + 1)
    tile = max(config.crop_px, 128)  # small crops are scaled up so that the captions fit
    header, caption, gap = 22, 18, 4
    font = ImageFont.load_default(size=13)
    columns = ["anchor", f"positive: < {config.r_pos_m:g} m", f"negative: > {config.r_neg_m:g} m"]
    if config.r_context_m is not None:
        columns[1] = f"positive: < {config.r_context_m:g} m"
    canvas = Image.new("RGB", (3 * tile + 2 * gap, header + len(a) * (caption + tile + gap)), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    labels = list(columns)
    for j, text in enumerate(columns):
        draw.text((j * (tile + gap) + 3, 4), text, fill=(255, 255, 255), font=font)
    for i in range(len(a)):
        y = header + i * (caption + tile + gap)
        captions = [f"#{i + 1}", f"{pos_m[i]:.0f} m away", f"{neg_m[i]:.0f} m away"]  # ground distance from the anchor
        for j, (crop, text) in enumerate(zip((a[i], p[i], neg[i]), captions, strict=True)):
            draw.text((j * (tile + gap) + 3, y + 2), text, fill=(230, 230, 120), font=font)
            picture = Image.fromarray(composite(crop.transpose(2, 0, 1))).resize((tile, tile), Image.NEAREST)
            canvas.paste(picture, (j * (tile + gap), y + caption))
        labels += captions
    return TripletPicture(png_bytes(np.asarray(canvas)), labels, pos_m.tolist(), neg_m.tolist())


def run_name(config: TrainConfig, region: str) -> str:
    """What a training run is, at a glance in the MLflow run list."""
    return f"train {config.encoder} seed {config.seed} · {config.epochs} epochs · {region}"


def training_summary(config: TrainConfig, device: DeviceSpec, n_train: int, n_val: int) -> dict[str, object]:
    """The training config's essentials (the version description's training table)."""
    positives = f"≤ {config.r_pos_m:g} m"
    if config.r_context_m is not None:
        positives += f" ({config.context_share:.0%} of anchors ≤ {config.r_context_m:g} m)"
    return {
        "encoder": f"`{config.encoder}`, {config.embedding_dim}-d projection head for the loss",
        "loss": f"`{config.loss}` (margin {config.margin:g}, `{config.mining}` mining)",
        "positives / negatives": f"{positives} / ≥ {config.r_neg_m:g} m",
        "epochs × steps × batch": f"{config.epochs} × {config.steps_per_epoch} × {config.batch_size}",
        "lr, weight decay": f"{config.lr:g}, {config.weight_decay:g}",
        "seed": config.seed,
        "anchors train / val": f"{n_train} / {n_val}",
        "device": device.describe(),
    }


def run_note(config: TrainConfig, region: str, tags: dict[str, str], registered: str = "") -> str:
    """The run's description (``mlflow.note.content``): what ran, the link back to Dagster, the model."""
    lines = [f"Triplet training of `{config.encoder}` (seed {config.seed}, {config.epochs} epochs) on **{region}**."]
    if "dagster_run_url" in tags:
        lines.append(f"Dagster run: [{tags.get('dagster_run_id', 'run')}]({tags['dagster_run_url']})")
    if registered:
        lines.append(registered)
    return "\n\n".join(lines)


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
    """Train (resuming from ``out_dir/checkpoints`` if a run was interrupted) and register the place embedding;
    ``progress(epochs_done, epochs)`` is called after every epoch.

    ``lineage_tags`` go on the run and the version (``region``, ``osm_bbox``, ``dagster_run_id``,
    ``dagster_run_url``, ``git_commit``, ...) and into the version's description.
    """
    check_split_fits(config, samples)
    experiment_id = tracking.setup(tracking_uri, experiment, artifact_root=str(Path(out_dir).parent / "mlruns"))
    reader = open_reader(mosaic_path, config.reader_config())
    train_xy, val_xy = samples.xy("train"), samples.xy("val")
    out = Path(out_dir)
    tags = {
        **lineage_tags,
        "mosaic_version": mosaic_version,
        "osm_sha256": osm_sha256,
        "samples_version": Path(samples.path).stem,
    }
    run = LoggedTraining(
        config=config,
        tags=tags,
        region=tags.get("region", Path(mosaic_path).name),
        reader=reader,
        n_train=len(train_xy),
        n_val=len(val_xy),
        pictures={"sample_triplets.png": lambda: triplet_picture(reader, train_xy, config).png},
    )

    def train_one(on_epoch: Callable[[EpochMetrics], None], on_resume: Callable[[int], None]) -> TrainResult:
        return train(
            config, reader, train_xy, val_xy, device, out / "checkpoints", on_epoch=on_epoch, on_resume=on_resume
        )

    data = TrainingData(mosaic_path, mosaic_version, samples.path, osm_sha256)
    return run.execute(
        train_one, data, schema_json, device, out, tracking_uri, experiment_id, model_name, log, progress
    )


Fit = Callable[[Callable[[EpochMetrics], None], Callable[[int], None]], TrainResult]  # (on_epoch, on_resume) -> result


@dataclass
class LoggedTraining:
    """One training run in MLflow: params, artifacts, per-epoch metrics, the registered place embedding.

    ``pictures`` are artifact names and functions making their PNG; ``extra_json`` more JSON artifacts;
    ``sections`` more ``## heading`` sections of the version's description (heading, body)."""

    config: TrainConfig
    tags: dict[str, str]
    region: str
    reader: CropGeometry
    n_train: int
    n_val: int
    pictures: dict[str, Callable[[], bytes]]
    extra_json: dict[str, object] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)

    def execute(
        self,
        fit: Fit,
        data: TrainingData,
        schema_json: str,
        device: DeviceSpec,
        out: Path,
        tracking_uri: str,
        experiment_id: str,
        model_name: str,
        log=print,
        progress=None,
    ) -> ModelManifest:
        """Train with ``fit`` inside a new MLflow run, register the result and describe it with ``data``'s lineage."""
        import mlflow

        config, tags, region = self.config, self.tags, self.region
        run_tags = {**tags, **tracking.run_owner_tags(), tracking.NOTE: run_note(config, region, tags)}
        with (
            tracking.using(tracking_uri),
            mlflow.start_run(experiment_id=experiment_id, run_name=run_name(config, region), tags=run_tags) as run,
        ):
            mlflow.log_params({**config.to_dict(), "device": device.describe(), "loc2vec_version": __version__})
            mlflow.log_params(device.reproducibility())
            mlflow.log_params({"n_train_anchors": self.n_train, "n_val_anchors": self.n_val})
            tracking.log_json(config.to_dict(), "config.json")
            mlflow.log_text(schema_json, "channel_schema.json")
            for name, document in self.extra_json.items():
                tracking.log_json(document, name)
            for name, picture in self.pictures.items():
                mlflow.log_image(_decode(picture()), name)
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
                log(
                    f"resuming from the checkpoint in {out / 'checkpoints'}: epochs 0-{epoch - 1} are not trained again"
                )
                mlflow.set_tag("resumed_from_epoch", str(epoch))

            if progress is not None:
                progress(0, config.epochs)
            result = fit(on_epoch, on_resume)
            for m in result.history[: result.resumed_from_epoch or 0]:  # epochs trained before the crash
                mlflow.log_metrics({k: v for k, v in asdict(m).items() if k != "epoch"}, step=m.epoch)
            mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": time.perf_counter() - started})
            mlflow.log_param("representation_dim", result.model.representation_dim)
            weights = out / "model.pt"
            save_encoder(result.model, weights)
            io = model_card.EmbeddingIO(
                crop_px=config.crop_px,
                m_per_px=float(self.reader.grid.resolution),
                channel_names=tuple(self.reader.channel_names),
                output_dim=result.model.representation_dim,
                encoder=config.encoder,
                projection_dim=config.embedding_dim,
            )
            essentials = training_summary(config, device, self.n_train, self.n_val)
            best = next((h for h in result.history if h.epoch == result.best_epoch), None)
            if best is not None:
                essentials["best epoch (val triplet acc)"] = f"{best.epoch} ({best.val_triplet_accuracy:.3f})"
            description = model_card.version_description(io, tags, essentials, tags.get("dagster_run_url"))
            for heading, body in self.sections:  # before the evaluation's section
                description = description.replace(
                    f"\n\n{model_card.EVALUATION}", f"\n\n{heading}\n\n{body}\n\n{model_card.EVALUATION}", 1
                )
            version, uri = tracking.register_place_embedding(
                result.model, model_name, tags, io, description, weights, tracking_uri
            )
            registered = f"Registered as `{model_name}` version {version}: the {io.output_dim}-d place embedding."
            mlflow.set_tag(tracking.NOTE, run_note(config, region, tags, registered))
            return ModelManifest(
                weights_path=str(weights),
                config=config.to_dict(),
                model_name=model_name,
                model_version=version,
                model_uri=uri,
                run_id=run.info.run_id,
                tracking_uri=tracking_uri,
                experiment_id=experiment_id,
                mosaic_path=data.mosaic_path,
                mosaic_version=data.mosaic_version,
                samples_path=data.samples_path,
                osm_sha256=data.osm_sha256,
                best_epoch=result.best_epoch,
                history=[asdict(h) for h in result.history],
                representation_dim=result.model.representation_dim,
                regions=data.regions,
            )


def _decode(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))
