"""A trained model's weights blended with its seeded initial weights, scored on a held-out region's protocol.

``alpha`` is the trained share: every parameter and batch-norm buffer of the encoder becomes
``alpha * trained + (1 - alpha) * initial`` (weight-space ensembling, as WiSE-FT, Wortsman et al. 2022, blends
a fine-tuned model with the one it started from). ``alpha = 1`` is the model's own embedding, ``alpha = 0``
the untrained baseline's encoder. Runs on a ``benchmarks/transfer.py`` output directory; not part of the suite:

    .venv/bin/python -m benchmarks.weight_blend --run /tmp/transfer-0 --region kotka-karhula --alphas 0.25,0.5,0.75
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.transfer import METRICS, ROOT, _number, held_out, score_embedded, write_embedded


def blended(trained: torch.nn.Module, initial: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A copy of ``initial`` whose floating-point state is ``alpha`` of ``trained``'s and the rest its own."""
    import copy

    ours, theirs = initial.state_dict(), trained.state_dict()
    state = {
        k: alpha * theirs[k].float() + (1 - alpha) * v.float() if v.is_floating_point() else theirs[k]
        for k, v in ours.items()
    }
    model = copy.deepcopy(initial)
    model.load_state_dict(state)
    return model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a benchmarks/transfer.py --out directory")
    p.add_argument("--region", required=True, help="a held-out region of that run")
    p.add_argument("--alphas", required=True, help="comma-separated trained shares, e.g. 0.25,0.5,0.75")
    p.add_argument("--catalog", default=str(ROOT / "regions.toml"))
    args = p.parse_args()

    from loc2vec.evaluation.embedders import encode
    from loc2vec.evaluation.run import untrained_encoder
    from loc2vec.models.encoders import load_encoder

    run, region = args.run, args.region
    config, protocol, frame, reader, model = held_out(run, region, args.catalog)
    trained, initial = load_encoder(model["weights_path"]), untrained_encoder(config, reader.channels)
    out = run / "blend"
    out.mkdir(exist_ok=True)
    print("| alpha | " + " | ".join(METRICS) + " |\n(then each baseline's leads on the bar's metrics)", flush=True)
    for alpha in (float(a) for a in args.alphas.split(",")):
        vectors = encode(blended(trained, initial, alpha), reader, frame[["x", "y"]].to_numpy(), config.crop_px)
        tag = f"{region}-{alpha:g}"
        embedded = write_embedded(vectors, frame, out / f"{tag}.parquet")
        document = score_embedded(protocol, embedded, out / f"eval-{tag}")
        print(f"| {alpha:g} | " + " | ".join(_number(document["model"].get(m)) for m in METRICS) + " |")
        for baseline, row in lead_rows(document.get("leads") or {}).items():
            print(f"|   lead over {baseline} | {row} |", flush=True)
    return 0


def lead_rows(leads: dict) -> dict[str, str]:
    """Per baseline of the bar, its leads on the bar's metrics with their intervals, ``|``-separated."""
    from loc2vec.evaluation.significance import LEAD_BASELINES, LEAD_METRICS

    def cell(lead: dict | None) -> str:
        return "n/a" if lead is None else f"{lead['lead']:+.3f} [{lead['low']:+.3f}, {lead['high']:+.3f}]"

    return {b: " | ".join(cell(leads.get(b, {}).get(m)) for m in LEAD_METRICS) for b in LEAD_BASELINES}


if __name__ == "__main__":
    raise SystemExit(main())
