"""Device selection and the CUDA fast path (AMP, channels_last, pinned memory, non-blocking copies).

The same code runs on CPU: every CUDA-only option is a field here, switched on only for CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loc2vec.errors import ConfigError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class DeviceSpec:
    """Where and how tensors are computed."""

    kind: str
    index: int = 0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    pin_memory: bool = False
    non_blocking: bool = False

    @property
    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.index}" if self.kind == "cuda" else self.kind)

    def autocast(self):
        """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
        enabled = self.amp_dtype is not None
        return torch.autocast(device_type=self.kind if enabled else "cpu", dtype=self.amp_dtype, enabled=enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Host uint8 NHWC-backed batch -> device tensor in NCHW channels_last layout."""
        if self.pin_memory and not batch.is_pinned():
            batch = batch.pin_memory()
        out = batch.to(self.device, non_blocking=self.non_blocking)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"cuda:{self.index} {torch.cuda.get_device_name(self.index)} amp={self.amp_dtype}"
        return f"{self.kind} threads={torch.get_num_threads()} isa={torch.backends.cpu.get_cpu_capability()}"

    def reproducibility(self) -> dict[str, str]:
        """What a CPU result depends on besides the seed (logged with every training run): torch's build, its
        intra-op thread count (reductions split by thread) and the vector instructions its kernels use."""
        return {
            "torch_version": torch.__version__,
            "torch_threads": str(torch.get_num_threads()),
            "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        }


def select_device(preference: str = "auto", amp: bool = True, local_rank: int = 0) -> DeviceSpec:
    """``auto`` picks CUDA, then MPS, then CPU. Asking for an absent accelerator is an error."""
    if preference not in DEVICE_CHOICES:
        raise ConfigError(f"device must be one of {DEVICE_CHOICES}, got {preference!r}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "cuda" and not cuda:
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False")
    if preference == "mps" and not mps:
        raise ConfigError("device 'mps' requested but MPS is not available")
    kind = preference if preference != "auto" else ("cuda" if cuda else "mps" if mps else "cpu")
    if kind == "cuda":
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        torch.backends.cudnn.benchmark = True
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DeviceSpec("cuda", index, dtype if amp else None, True, True, True)
    return DeviceSpec(kind, 0, None, True, False, False)
