"""Training benchmarks on this CPU: encoder training throughput and the share of step time spent on data.

Run ``python -m benchmarks.train_bench`` (2.5 to 5 minutes, depending on load). Data is real: the embedded
Monaco extract (``data/osm/monaco_region_2016.osm.pbf``) cut to central Monaco, rendered to a 3 m/px mosaic in
a temp dir, anchors from ``build_sample_locations``.

1. Training throughput. A sample is one 12x128x128 crop through forward, triplet mining + loss, backward
   and an AdamW step; a step is 64 anchors + 64 positives, exactly the body of the training loop
   (``DeviceSpec.to_device``, ``TripletObjective``), fed with pre-cut real ``TripletBatches`` so that data
   loading is not counted. Variants: every encoder in ``ENCODERS``; ``small_cnn`` and ``resnet18`` with and
   without channels_last (the loop uses channels_last); and a plain 4-block CNN baseline (3x3 convs
   32-64-128-128 with BN/ReLU/2x2 max-pool, no early downsampling) under the same head. Variants are
   interleaved round by round (the order rotates each round) so load from other processes hits all alike;
   each gets ``--seconds`` of timed steps per round after one warm-up step. Also ``small_cnn`` and the
   baseline on one thread (read per CPU second, robust to load), and ``small_cnn`` in a child process with
   the default OpenMP wait policy and with ``OMP_WAIT_POLICY=PASSIVE`` (read only at process start).
2. Data: ``TripletBatches.batch`` alone (crops/s), and the real ``loc2vec.training.loop.train`` for a
   short config with ``num_workers=0`` and ``1`` (interleaved), reporting ``samples_per_s`` and
   ``data_wait_share`` from its ``EpochMetrics``.

Rates are given per wall second and as process CPU seconds per wall second (2.0 = both cores busy for us;
lower means other processes took the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import Clock

ROOT = Path(__file__).resolve().parents[1]
PBF = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
REGION = (7.405, 43.722, 7.445, 43.752)  # central Monaco, ~3.2 x 3.3 km
CROP = 128
BATCH = 64
GOAL_SAMPLES_PER_S = 300.0
GOAL_DATA_WAIT = 0.10
ISSUE_PLAIN_CNN = 31.0  # samples/s the issue reports for the plain 4-block CNN


class PlainCNN(nn.Module):
    """The baseline: 4 blocks of conv3x3 + BN + ReLU + 2x2 max-pool at full resolution, then global pool."""

    def __init__(self, in_channels: int = 12, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


# --- setup ----------------------------------------------------------------------------------------------


def build_data(tmp: Path):
    """Features, mosaic, reader and sample locations for the benchmark region."""
    from loc2vec.data.crops import CropReader
    from loc2vec.data.locations import build_sample_locations
    from loc2vec.data.samples import SplitSpec
    from loc2vec.geo import BBox
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import MosaicSpec, render_mosaic
    from loc2vec.schema import load_schema

    with Clock() as c:
        features, _ = build_feature_layers(PBF, load_schema(), tmp / "features", bbox=BBox(*REGION))
        mosaic = render_mosaic(features, MosaicSpec(resolution=3.0), tmp / "mosaic")
        reader = CropReader.from_store(mosaic.path)
        spec = SplitSpec(spacing_m=40.0, block_m=700.0, crop_px=64, seed=0)
        manifest, _ = build_sample_locations(reader, spec, mosaic.version, tmp / "samples")
    return reader, manifest, c.wall


# --- 1. training throughput -----------------------------------------------------------------------------


BASELINE = "plain 4-block CNN (baseline)"
SMALL_1T = "small_cnn, 1 thread"
BASELINE_1T = "plain 4-block CNN, 1 thread"


def variants() -> list[tuple[str, str, bool, int | None]]:
    """(label, encoder name or 'plain_cnn', channels_last, torch threads or None for the default)."""
    from loc2vec.models.encoders import ENCODERS

    out: list[tuple[str, str, bool, int | None]] = [(BASELINE, "plain_cnn", True, None)]
    for name in ENCODERS:
        out.append((name, name, True, None))
        if name in ("small_cnn", "resnet18"):
            out.append((f"{name}, no channels_last", name, False, None))
    # one thread, read per CPU second: robust to other processes' load on the shared cores
    out += [(SMALL_1T, "small_cnn", True, 1), (BASELINE_1T, "plain_cnn", True, 1)]
    return out


def build_model(name: str, channels_last: bool) -> nn.Module:
    from loc2vec.models.encoders import Encoder, build_encoder

    torch.manual_seed(0)
    if name == "plain_cnn":
        backbone = PlainCNN(12)
        model = Encoder(backbone, backbone.out_features, 16)
    else:
        model = build_encoder(name, 16, 12)
    model.train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Trainer:
    """One variant: model, optimizer and the training loop's step body."""

    def __init__(self, name: str, channels_last: bool, threads: int | None, batches, r_neg_m: float) -> None:
        from loc2vec.models.losses import TripletObjective
        from loc2vec.training.device import DeviceSpec

        self.model = build_model(name, channels_last)
        self.device = DeviceSpec("cpu", 0, None, channels_last, False, False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=1e-4)
        self.objective = TripletObjective("triplet", 0.2, "semihard")
        self.labels = torch.arange(BATCH).repeat(2)
        self.batches, self.r_neg_m, self.k, self.threads = batches, r_neg_m, 0, threads
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.samples: list[int] = []

    def step(self) -> int:
        anchors, positives, locations = self.batches[self.k % len(self.batches)]
        self.k += 1
        x = self.device.to_device(torch.cat([anchors, positives]).permute(0, 3, 1, 2))
        with self.device.autocast():
            emb = self.model(x)
        loss = self.objective(emb.float(), self.labels[: len(x)], locations, self.r_neg_m)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        float(loss.detach())
        return len(x)

    def timed(self, seconds: float, warmup: int, min_steps: int = 1) -> None:
        default = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        for _ in range(warmup):  # oneDNN primitive cache, allocator
            self.step()
        n, steps = 0, 0
        with Clock() as c:
            while steps < min_steps or time.perf_counter() - c.wall0 < seconds:
                n += self.step()
                steps += 1
        torch.set_num_threads(default)
        self.walls.append(c.wall)
        self.cpus.append(c.cpu)
        self.samples.append(n)

    def rates(self) -> dict:
        per_round = [n / w for n, w in zip(self.samples, self.walls, strict=True)]
        return {
            "median": statistics.median(per_round),
            "best": max(per_round),
            "cpu_per_wall": sum(self.cpus) / sum(self.walls),
            "per_cpu_s": sum(self.samples) / sum(self.cpus),
            "samples": sum(self.samples),
        }


CHILDREN = {  # small_cnn in a fresh process: OpenMP reads OMP_WAIT_POLICY once, at start-up
    "small_cnn, child process, default OpenMP wait": {},
    "small_cnn, child process, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


class ChildTrainer:
    """``small_cnn`` timed in a child process with its own environment; same batches, same step."""

    def __init__(self, env: dict, batches_path: Path) -> None:
        self.env, self.batches_path = env, batches_path
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.samples: list[int] = []

    def timed(self, seconds: float, warmup: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | self.env
        cmd = [sys.executable, "-m", "benchmarks.train_bench", "--child", str(self.batches_path)]
        cmd += ["--seconds", str(seconds)]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        self.walls.append(res["wall"])
        self.cpus.append(res["cpu"])
        self.samples.append(res["samples"])

    rates = Trainer.rates


def child_main(batches_path: str, seconds: float) -> None:
    arrays = np.load(batches_path)
    batches = [tuple(torch.from_numpy(arrays[f"{k}_{i}"]) for i in range(3)) for k in range(len(arrays.files) // 3)]
    from loc2vec.training.config import TrainConfig

    trainer = Trainer("small_cnn", True, None, batches, TrainConfig().r_neg_m)
    trainer.timed(seconds, warmup=2)
    print(json.dumps({"wall": trainer.walls[0], "cpu": trainer.cpus[0], "samples": trainer.samples[0]}))


def bench_throughput(batches, rounds: int, seconds: float, r_neg_m: float, tmp: Path) -> dict[str, dict]:
    trainers: dict = {label: Trainer(name, cl, threads, batches, r_neg_m) for label, name, cl, threads in variants()}
    path = tmp / "batches.npz"
    np.savez(path, **{f"{k}_{i}": t.numpy() for k, b in enumerate(batches) for i, t in enumerate(b)})
    trainers.update({label: ChildTrainer(env, path) for label, env in CHILDREN.items()})
    labels = list(trainers)
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            trainers[label].timed(seconds, warmup=1 if r == 0 else 0)
        line = ", ".join(f"{lab}: {trainers[lab].samples[-1] / trainers[lab].walls[-1]:.0f}" for lab in labels)
        print(f"  round {r + 1}/{rounds} samples/s: {line}", flush=True)
    return {label: t.rates() for label, t in trainers.items()}


# --- 2. data loading ------------------------------------------------------------------------------------


def bench_batches(reader, xy: np.ndarray, spec, rounds: int, batches_per_round: int) -> dict:
    from loc2vec.data.triplets import TripletBatches

    data = TripletBatches(reader, xy, spec, seed=0, epoch=0, steps=10**6)
    data.batch(0)
    rates, cpu, wall = [], 0.0, 0.0
    for r in range(rounds):
        with Clock() as c:
            for k in range(batches_per_round):
                data.batch(1 + r * batches_per_round + k)
        rates.append(2 * spec.batch_size * batches_per_round / c.wall)
        cpu += c.cpu
        wall += c.wall
    return {"median": statistics.median(rates), "best": max(rates), "cpu_per_wall": cpu / wall}


def bench_loop(reader, train_xy, val_xy, tmp: Path, rounds: int, epochs: int, steps: int) -> dict[int, list]:
    from loc2vec.training.config import TrainConfig
    from loc2vec.training.device import select_device
    from loc2vec.training.loop import train

    device = select_device("cpu")
    out: dict[int, list] = {0: [], 1: []}
    for r in range(rounds):
        for workers in (0, 1) if r % 2 == 0 else (1, 0):
            config = TrainConfig(
                epochs=epochs, steps_per_epoch=steps, patience=epochs + 1, num_workers=workers, val_triplets=64
            )
            result = train(config, reader, train_xy, val_xy, device, tmp / f"ckpt-r{r}-w{workers}")
            out[workers].extend(result.history)
            epochs_text = ", ".join(
                f"epoch {h.epoch}: {h.samples_per_s:.0f} samples/s, wait {h.data_wait_share:.1%}"
                for h in result.history
            )
            print(f"  round {r + 1}/{rounds} num_workers={workers}: {epochs_text}", flush=True)
    return out


# --- report ---------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per variant per round (min 1 step)")
    ap.add_argument("--loop-rounds", type=int, default=1, help="train() runs per num_workers setting")
    ap.add_argument("--loop-epochs", type=int, default=2)
    ap.add_argument("--loop-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child, args.seconds)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    from loc2vec.data.triplets import TripletBatches
    from loc2vec.training.config import TrainConfig

    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load0:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmpdir:
        tmp = Path(tmpdir)
        reader, manifest, setup_s = build_data(tmp)
        train_xy, val_xy = manifest.xy("train"), manifest.xy("val")
        print(
            f"setup {setup_s:.1f} s: mosaic {reader.channels}x{reader.height}x{reader.width} at 3 m/px, "
            f"anchors {manifest.counts}",
            flush=True,
        )
        config = TrainConfig()
        spec = config.triplet_spec()
        data = TripletBatches(reader, train_xy, spec, seed=0, epoch=0, steps=4)
        batches = [tuple(torch.from_numpy(a) for a in data.batch(k)) for k in range(4)]

        print(f"\n1. training throughput, batch {BATCH}+{BATCH} crops 12x{CROP}x{CROP}", flush=True)
        thr = bench_throughput(batches, args.rounds, args.seconds, config.r_neg_m, tmp)

        print("\n2. data: TripletBatches.batch alone, then train() with num_workers 0 and 1", flush=True)
        gen = bench_batches(reader, train_xy, spec, args.rounds, 10)
        print(f"  TripletBatches.batch: {gen['median']:,.0f} crops/s (median), best {gen['best']:,.0f}", flush=True)
        loop = bench_loop(reader, train_xy, val_xy, tmp, args.loop_rounds, args.loop_epochs, args.loop_steps)
    load1 = os.getloadavg()[0]
    total = time.perf_counter() - started

    report(thr, gen, loop, total, load0, load1)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def report(thr: dict, gen: dict, loop: dict, total: float, load0: float, load1: float) -> None:
    base, small, small_1t, base_1t = thr[BASELINE], thr["small_cnn"], thr[SMALL_1T], thr[BASELINE_1T]
    print(f"\ntotal {total:.0f} s; load average {load0:.2f} at start, {load1:.2f} at end")
    print(
        "\n| encoder (training step, 64+64 crops) | samples/s, median of rounds | best round "
        "| samples per CPU s | CPU s per wall s | vs plain CNN (median) |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in thr.items():
        print(
            f"| {label} | {r['median']:,.0f} | {r['best']:,.0f} | {r['per_cpu_s']:,.0f} | {r['cpu_per_wall']:.2f} "
            f"| {r['median'] / base['median']:.1f}× |"
        )
    cl_gain = small["median"] / thr["small_cnn, no channels_last"]["median"]
    rn_gain = thr["resnet18"]["median"] / thr["resnet18, no channels_last"]["median"]
    print(
        f"\nsmall_cnn vs the plain 4-block CNN, same run: {small['median'] / base['median']:.1f}× (medians), "
        f"{small['best'] / base['best']:.1f}× (best rounds), {small['per_cpu_s'] / base['per_cpu_s']:.1f}× "
        f"(per CPU s); the issue measured the plain CNN at {ISSUE_PLAIN_CNN:.0f} samples/s"
    )
    print(f"channels_last vs contiguous NCHW (medians): small_cnn {cl_gain:.2f}×, resnet18 {rn_gain:.2f}×")
    print(
        f"on 1 thread, per CPU second: small_cnn {small_1t['per_cpu_s']:,.0f}, plain CNN {base_1t['per_cpu_s']:,.0f} "
        f"samples: {small_1t['per_cpu_s'] / base_1t['per_cpu_s']:.1f}×"
    )
    print(f"\nTripletBatches.batch alone: {gen['median']:,.0f} crops/s (median of rounds), {gen['best']:,.0f} best")
    print("\n| train(), small_cnn, batch 64 | epoch | samples/s | data_wait_share |")
    print("|---|---|---|---|")
    for workers, history in loop.items():
        for h in history:
            print(f"| num_workers={workers} | {h.epoch} | {h.samples_per_s:,.0f} | {h.data_wait_share:.1%} |")
    summary = {}
    for workers, history in loop.items():
        summary[workers] = (
            statistics.median(h.samples_per_s for h in history),
            statistics.median(h.data_wait_share for h in history),
            max(h.data_wait_share for h in history),
        )
        rate, wait, worst = summary[workers]
        print(f"num_workers={workers}: median {rate:,.0f} samples/s, data wait {wait:.1%} (worst epoch {worst:.1%})")
    print(
        f"\ngoal small_cnn >= {GOAL_SAMPLES_PER_S:.0f} samples/s: {_verdict(small['median'] >= GOAL_SAMPLES_PER_S)} "
        f"({small['median']:,.0f} median, {small['best']:,.0f} best round)"
    )
    for workers, (_, wait, _) in summary.items():
        verdict = _verdict(wait < GOAL_DATA_WAIT)
        print(f"goal data wait < {GOAL_DATA_WAIT:.0%}, num_workers={workers}: {verdict} ({wait:.1%} median epoch)")


if __name__ == "__main__":
    main()
