"""Place embeddings assembled from the parts of a trained model and of its untrained encoder, scored on R's protocol.

The small CNN's place embedding has four parts (``SmallCNN.place_features``): the context, and the stem's
centre, whole-crop mean and peak. This scores, on a held-out region of a ``benchmarks/transfer.py`` output
directory, embeddings that take each part from the model trained without that region (``M``), from its
untrained encoder (``U``: the same architecture at its seeded initial weights), or from both, e.g. a trained
context over random stem summaries. Each part is normalised, as in ``Encoder.embed``. Not part of the suite:

    .venv/bin/python -m benchmarks.embedding_parts --run /tmp/transfer-0 --region neubrandenburg \\
        --variants MMMM----,M----UUU,MMMMUUUU

A variant is 8 letters: the model's context, centre, whole, peak (``M`` or ``-``), then the untrained
encoder's (``U`` or ``-``). ``MMMM----`` is the model's own embedding, ``----UUUU`` the untrained baseline's.

``--context`` says where both encoders' context part comes from: ``crop`` (as ``SmallCNN.place_features``:
the last stage pooled over the whole crop), ``centre`` (the last stage pooled over the crop's central half
only) or ``inner`` (the encoder run on the crop's central half alone, then pooled: the context of a crop half
the size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.transfer import METRICS, ROOT, _number, held_out, score_embedded, write_embedded

CONTEXTS = ("crop", "centre", "inner")


def place_parts(backbone: torch.nn.Module, x: torch.Tensor, context: str) -> tuple[torch.Tensor, ...]:
    """``SmallCNN.place_features`` with its context part taken as ``context`` says (``CONTEXTS``)."""
    from loc2vec.models.encoders import central_half

    parts = backbone.place_features(x)
    if context == "centre":
        deep = central_half(backbone.features[1:](backbone.features[0](x)))
        return (deep.mean(dim=(2, 3)), *parts[1:])
    if context == "inner":
        return (backbone(central_half(x)), *parts[1:])
    return parts


class PartsEmbedding(torch.nn.Module):
    """``embed``: the chosen parts of the model's and the untrained encoder's place features, normalised."""

    def __init__(self, model: torch.nn.Module, untrained: torch.nn.Module, variant: str, context: str = "crop") -> None:
        super().__init__()
        if len(variant) != 8 or set(variant[:4]) - {"M", "-"} or set(variant[4:]) - {"U", "-"} or variant == "-" * 8:
            raise SystemExit(f"variant {variant!r}: 4 of M/- then 4 of U/-, at least one part")
        self.model, self.untrained, self.variant, self.context = model, untrained, variant, context

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        from loc2vec.models.encoders import _place_representation

        x = x.float().div_(255.0)
        trained = place_parts(self.model.backbone, x, self.context)
        random = place_parts(self.untrained.backbone, x, self.context)
        parts = [trained[i] for i in range(4) if self.variant[i] == "M"]
        parts += [random[i] for i in range(4) if self.variant[4 + i] == "U"]
        return _place_representation(*parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a benchmarks/transfer.py --out directory")
    p.add_argument("--region", required=True, help="a held-out region of that run")
    p.add_argument("--variants", required=True, help="comma-separated, e.g. MMMM----,M----UUU")
    p.add_argument("--context", choices=CONTEXTS, default="crop", help="where the context part comes from")
    p.add_argument("--catalog", default=str(ROOT / "regions.toml"))
    args = p.parse_args()

    from loc2vec.evaluation.embedders import encode
    from loc2vec.evaluation.run import untrained_encoder
    from loc2vec.models.encoders import load_encoder

    run, region = args.run, args.region
    config, protocol, frame, reader, model = held_out(run, region, args.catalog)
    trained, untrained = load_encoder(model["weights_path"]), untrained_encoder(config, reader.channels)
    out = run / "parts"
    out.mkdir(exist_ok=True)
    print("| variant | " + " | ".join(METRICS) + " |")
    for variant in args.variants.split(","):
        embedding = PartsEmbedding(trained, untrained, variant, args.context)
        vectors = encode(embedding, reader, frame[["x", "y"]].to_numpy(), config.crop_px)
        tag = f"{region}-{variant}" + ("" if args.context == "crop" else f"-{args.context}")
        embedded = write_embedded(vectors, frame, out / f"{tag}.parquet")
        metrics = score_embedded(protocol, embedded, out / f"eval-{tag}")["model"]
        print(f"| {variant} | " + " | ".join(_number(metrics.get(m)) for m in METRICS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
