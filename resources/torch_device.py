"""The compute device: CUDA (AMP, channels_last, pinned memory) when present, else MPS or CPU."""

import dagster as dg
from pydantic import Field

from loc2vec.runtime import set_torch_threads
from loc2vec.training.device import DeviceSpec, select_device


class TorchDevice(dg.ConfigurableResource):
    """Chooses the torch device once per run; every CUDA-only option stays behind it."""

    device: str = Field(default="auto", description="auto | cuda | mps | cpu")
    amp: bool = Field(default=True, description="Mixed precision on CUDA (bf16 if supported, else fp16).")
    threads: int = Field(
        default=2,
        description="torch CPU threads, pinned so that a seed gives the same model on any machine (the result "
        "depends on the thread count); 0: one per core (faster on big machines, results then vary with it).",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Once per run process, before any asset uses the device: torch's thread count."""
        set_torch_threads(self.threads)

    def spec(self) -> DeviceSpec:
        return select_device(self.device, amp=self.amp)
