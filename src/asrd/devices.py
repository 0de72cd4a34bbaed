"""Where models run and how they decode there: the device, its compute type, and the
scheduler's settings for it (batch and beam defaults differ between a CPU and a GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field

import ctranslate2

from .config import ConfigError, Settings
from .cuda_libraries import load_pip_cuda_libraries
from .decoding import DecodeSettings


@dataclass
class DeviceChoice:
    device: str
    compute_type: str
    flash_attention: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"


def choose_device(settings: Settings) -> DeviceChoice:
    """Apply `DEVICE`, `USE_GPU_IF_AVAILABLE`, `COMPUTE_TYPE` and `FLASH_ATTENTION_2`."""
    if settings.device == "cuda" or (settings.device == "auto" and settings.use_gpu_if_available):
        load_pip_cuda_libraries()
    has_cuda = ctranslate2.get_cuda_device_count() > 0
    notes = []
    if settings.device == "cuda" and not has_cuda:
        # A configuration error (`asrd serve` exits 2 with this line), not a crash.
        raise ConfigError(
            "DEVICE=cuda but no usable CUDA device was found (no GPU, or no working driver); "
            "set DEVICE=auto to use the CPU instead"
        )
    auto_gpu = settings.device == "auto" and has_cuda and settings.use_gpu_if_available
    device = "cuda" if settings.device == "cuda" or auto_gpu else "cpu"
    compute_type = settings.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    flash = settings.flash_attention_2 and device == "cuda"
    if settings.flash_attention_2 and not flash:
        notes.append("FLASH_ATTENTION_2 ignored: flash attention needs a CUDA GPU")
    return DeviceChoice(device, compute_type, flash, notes)


def cpu_instead(settings: Settings) -> DeviceChoice:
    """The CPU, for DEVICE=auto when the GPU could not take a model."""
    compute_type = "int8" if settings.compute_type == "auto" else settings.compute_type
    return DeviceChoice("cpu", compute_type)


def decode_settings(settings: Settings, device: DeviceChoice) -> DecodeSettings:
    """The scheduler's settings on `device`."""
    on_cpu = device.on_cpu
    batch_size = settings.batch_size or (6 if on_cpu else 16)
    return DecodeSettings(
        batch_size=batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        encode_batch_size=settings.encode_batch_size or (1 if on_cpu else batch_size),
        beam_size=settings.beam_size or (1 if on_cpu else 5),
        chunk_length_s=settings.chunk_length_s,
        vad_filter=settings.vad_filter,
        compression_ratio_threshold=settings.compression_ratio_threshold,
        log_prob_threshold=settings.log_prob_threshold,
        no_speech_threshold=settings.no_speech_threshold,
        pack_windows=settings.pack_short_audio,
    )
