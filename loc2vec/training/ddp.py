"""Distributed training entry point, launched by torchrun (NCCL on GPUs, gloo on CPU).

    torchrun --standalone --nproc_per_node 2 -m loc2vec.training.ddp --mosaic M.zarr --samples S.parquet \\
        --config config.json --out DIR

Every rank builds the same model (same seed), trains on its share of each epoch's batches with
gradients averaged by DistributedDataParallel; rank 0 writes checkpoints and ``DIR/model.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from loc2vec.runtime import configure_process

configure_process()  # an entry point (torchrun starts it): before torch is imported

import torch.distributed as dist  # noqa: E402

from loc2vec.data.chunked import open_reader  # noqa: E402
from loc2vec.data.locations import SamplesManifest  # noqa: E402
from loc2vec.models.encoders import save_encoder  # noqa: E402
from loc2vec.training.config import TrainConfig  # noqa: E402
from loc2vec.training.device import select_device  # noqa: E402
from loc2vec.training.loop import train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mosaic", required=True)
    parser.add_argument("--samples", required=True, help="sample-locations GeoParquet")
    parser.add_argument("--config", required=True, help="TrainConfig as JSON")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(args.device, local_rank=local_rank)
    dist.init_process_group(backend="nccl" if device.kind == "cuda" else "gloo")
    try:
        config = TrainConfig(**json.loads(Path(args.config).read_text()))
        samples = SamplesManifest(args.samples, "", {}, {}, 0.0, 0.0)
        reader = open_reader(args.mosaic, config.reader_config())
        out = Path(args.out)
        result = train(config, reader, samples.xy("train"), samples.xy("val"), device, out / "checkpoints")
        if dist.get_rank() == 0:
            save_encoder(result.model, out / "model.pt")
            (out / "history.json").write_text(json.dumps([h.__dict__ for h in result.history], indent=2))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
