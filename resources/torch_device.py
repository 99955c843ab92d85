"""The compute device: CUDA (AMP, channels_last, pinned memory) when present, else MPS or CPU."""

import dagster as dg
from pydantic import Field

from loc2vec.training.device import DeviceSpec, select_device


class TorchDevice(dg.ConfigurableResource):
    """Chooses the torch device once per run; every CUDA-only option stays behind it."""

    device: str = Field(default="auto", description="auto | cuda | mps | cpu")
    amp: bool = Field(default=True, description="Mixed precision on CUDA (bf16 if supported, else fp16).")
    threads: int = Field(default=0, description="torch CPU threads (0: torch's default).")

    def spec(self) -> DeviceSpec:
        import torch

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        return select_device(self.device, amp=self.amp)
