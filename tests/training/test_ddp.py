"""DDP through torchrun with 2 gloo processes on CPU: trains and yields the single-process model's shapes."""

import json
import subprocess
import sys

import pytest

from loc2vec.models.encoders import build_encoder, load_encoder
from loc2vec.training.config import TrainConfig


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train(monaco_mosaic, monaco_samples, tmp_path):
    _, mosaic = monaco_mosaic
    _, manifest = monaco_samples
    # with both auxiliary decoders, whose gradients the loop averages over the ranks itself (DDP wraps the encoder)
    config = TrainConfig(
        epochs=2,
        steps_per_epoch=4,
        batch_size=16,
        crop_px=64,
        val_triplets=32,
        r_neg_m=300.0,
        seed=2,
        recon_weight=1.0,
        mask_ratio=0.25,
        patch_recon_weight=1.0,
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "loc2vec.training.ddp",
        "--mosaic",
        mosaic.path,
        "--samples",
        manifest.path,
        "--config",
        str(tmp_path / "config.json"),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_encoder(tmp_path / "out" / "model.pt").state_dict()
    reference = build_encoder(config.encoder, config.embedding_dim).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len(history) == 2 and all(h["val_loss"] == h["val_loss"] for h in history)
