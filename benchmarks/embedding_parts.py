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

``--context-weight W`` scales both encoders' context part by W after it is normalised (1: as ``Encoder.embed``;
0: the stem parts alone), to see how much of a gap is the context's weight in the distances and how much its
content; ``--spread`` first prints, for each part of either encoder, how far apart R's test locations lie in it
(the mean distance between their normalised part vectors: a part spread wider weighs more in the embedding's
distances). ``--context`` says where both encoders' context part comes from: ``crop`` (as ``SmallCNN.place_features``:
the last stage pooled over the whole crop), ``centre`` (the last stage pooled over the crop's central half
only) or ``inner`` (the encoder run on the crop's central half alone, then pooled: the context of a crop half
the size).
"""

from __future__ import annotations

import argparse
import itertools
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

    def __init__(
        self,
        model: torch.nn.Module,
        untrained: torch.nn.Module,
        variant: str,
        context: str = "crop",
        context_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(variant) != 8 or set(variant[:4]) - {"M", "-"} or set(variant[4:]) - {"U", "-"} or variant == "-" * 8:
            raise SystemExit(f"variant {variant!r}: 4 of M/- then 4 of U/-, at least one part")
        self.model, self.untrained, self.variant, self.context = model, untrained, variant, context
        self.context_weight = context_weight

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = x.float().div_(255.0)
        chosen = [
            (part, i)
            for i, part in enumerate(place_parts(self.model.backbone, x, self.context))
            if self.variant[i] == "M"
        ]
        chosen += [
            (part, i)
            for i, part in enumerate(place_parts(self.untrained.backbone, x, self.context))
            if self.variant[4 + i] == "U"
        ]
        # as Encoder.embed: each part normalised, the whole divided by the root of their number
        scaled = [F.normalize(part.float(), dim=1) * (self.context_weight if i == 0 else 1.0) for part, i in chosen]
        return torch.cat(scaled, dim=1) / len(scaled) ** 0.5


PARTS = ("context", "centre", "whole", "peak")


def print_spread(trained, untrained, reader, xy, crop_px: int, context: str) -> None:
    """For each part of each encoder: the mean distance between the normalised part vectors of the points ``xy``
    (one pass: both encoders' eight parts in one embedding, each cut out and scaled back to unit length)."""
    import numpy as np
    from scipy.spatial.distance import pdist

    from loc2vec.evaluation.embedders import encode

    vectors = encode(PartsEmbedding(trained, untrained, "MMMMUUUU", context), reader, xy, crop_px) * 8**0.5
    stem = (trained.representation_dim - trained.context_dim) // 3
    edges = np.cumsum([0, *([trained.context_dim, stem, stem, stem] * 2)])
    spreads = [float(np.mean(pdist(vectors[:, a:b]))) for a, b in itertools.pairwise(edges)]
    print("| part | model | untrained |\n|---|---|---|")
    for i, part in enumerate(PARTS):
        print(f"| {part} | {spreads[i]:.3f} | {spreads[4 + i]:.3f} |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a benchmarks/transfer.py --out directory")
    p.add_argument("--region", required=True, help="a held-out region of that run")
    p.add_argument("--variants", required=True, help="comma-separated, e.g. MMMM----,M----UUU")
    p.add_argument("--context", choices=CONTEXTS, default="crop", help="where the context part comes from")
    p.add_argument("--context-weight", type=float, default=1.0, help="scale of the normalised context part")
    p.add_argument("--spread", action="store_true", help="print each part's spread over R's test locations first")
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
    if args.spread:
        test_xy = frame.loc[(frame["kind"] == "location") & (frame["split"] == "test"), ["x", "y"]].to_numpy()
        print_spread(trained, untrained, reader, test_xy, config.crop_px, args.context)
    print("| variant | " + " | ".join(METRICS) + " |")
    for variant in args.variants.split(","):
        embedding = PartsEmbedding(trained, untrained, variant, args.context, args.context_weight)
        vectors = encode(embedding, reader, frame[["x", "y"]].to_numpy(), config.crop_px)
        tag = f"{region}-{variant}" + ("" if args.context == "crop" else f"-{args.context}")
        tag += "" if args.context_weight == 1 else f"-w{args.context_weight:g}"
        embedded = write_embedded(vectors, frame, out / f"{tag}.parquet")
        metrics = score_embedded(protocol, embedded, out / f"eval-{tag}")["model"]
        print(f"| {variant} | " + " | ".join(_number(metrics.get(m)) for m in METRICS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
