"""The served models: MODEL_ID (the default) and MODELS, each in a `ModelSlot`, found by any
name a client may send for them, and kept within MAX_LOADED_MODELS / MAX_LOADED_MODELS_MB by
unloading the least recently used idle model before another one loads.

All the models share one compute gate on a CPU (two models each using every core would only
slow each other down; they take turns batch by batch), and the same audio threads.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from .audio_lanes import AudioLanes
from .compute import ComputeGate
from .config import ConfigError, Settings
from .devices import DeviceChoice, choose_device
from .models import ModelNames, choose_model_id, same_model
from .slot import ModelInUse, ModelNotReady, ModelSlot, ModelState

log = logging.getLogger(__name__)


class ModelNotServed(Exception):
    """A request named a model this server does not serve (the message lists those it does)."""


class ModelRegistry:
    def __init__(self, settings: Settings, audio: AudioLanes):
        self.settings, self.audio = settings, audio
        self.device = choose_device(settings)
        self._cpu_gate = ComputeGate()
        self._gpu_gate = ComputeGate(concurrent=True)  # GPUs run models side by side
        # Loading and unloading, one at a time (inference runs on the schedulers' threads).
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-loader")
        self._room = asyncio.Lock()
        default_id = choose_model_id(
            settings.model_id,
            on_cpu=self.device.on_cpu,
            cpu_fallback_model=settings.cpu_fallback_model,
            max_model=settings.max_model,
            develop_mode=settings.develop_mode,
        )
        served = [(settings.model_id, default_id)]
        for model_id in settings.models:
            if not any(same_model(model_id, s) or same_model(model_id, c) for c, s in served):
                served.append((model_id, model_id))
        self.names = ModelNames(served, settings.model_aliases)
        self.slots = [
            self._slot(served_id, default=index == 0) for index, (_, served_id) in enumerate(served)
        ]
        for name in settings.preload_models:
            if self.names.find(name) is None:
                raise ConfigError(f"PRELOAD_MODELS: {name!r} is not served (MODEL_ID or MODELS)")

    def _slot(self, model_id: str, *, default: bool) -> ModelSlot:
        settings = self.settings
        ttl = settings.unload_model_after_s if default else settings.model_ttl_s
        for name, seconds in settings.model_ttls.items():
            if same_model(name, model_id) or (default and same_model(name, settings.model_id)):
                ttl = seconds
        slot = ModelSlot(
            model_id,
            settings=settings,
            device=self.device,
            audio=self.audio,
            gate=self._gate,
            loader=self._loader,
            ttl_s=ttl,
            is_default=default,
        )
        slot.before_load = self._make_room
        return slot

    def _gate(self, device: DeviceChoice) -> ComputeGate:
        return self._cpu_gate if device.on_cpu else self._gpu_gate

    @property
    def default(self) -> ModelSlot:
        return self.slots[0]

    def get(self, name: str | None) -> ModelSlot:
        """The slot `name` means (None or "": the default); `ModelNotServed` if none."""
        if not name or not name.strip():
            return self.default
        index = self.names.find(name)
        if index is None:
            raise ModelNotServed(self.names.not_served(name))
        return self.slots[index]

    @property
    def loaded(self) -> list[ModelSlot]:
        return [slot for slot in self.slots if slot.loaded]

    @property
    def job_count(self) -> int:
        """Transcriptions in the schedulers, all models."""
        return sum(slot.scheduler.job_count for slot in self.slots)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: the default model (LOAD_MODEL_ON_STARTUP), then PRELOAD_MODELS."""
        for note in self._settings_notes() + self.device.notes:
            log.warning(note)
        default = self.default
        if self.settings.load_model_on_startup:
            default.starting = True
            try:
                await default.load()
            except ModelNotReady:
                pass  # its state says FAILED: `/hc` and the CLI report it
            finally:
                default.starting = False
        for name in self.settings.preload_models:
            slot = self.get(name)
            try:
                await slot.load()
            except ModelNotReady as exc:
                log.error("PRELOAD_MODELS: %s", exc)

    async def _make_room(self, slot: ModelSlot) -> None:
        """Before `slot` loads: unload least recently used idle models until it fits;
        `ModelNotReady` (503) when the models in the way are all busy."""
        async with self._room:
            while (victim := self._in_the_way(slot)) is not None:
                if victim is False:
                    raise ModelNotReady(self._full_message(slot), retry_after_s=10)
                log.info("unloading %s (least recently used) to make room for %s",
                         victim.public_id, slot.public_id)  # fmt: skip
                victim.unload()

    def _in_the_way(self, slot: ModelSlot) -> ModelSlot | bool | None:
        """None: `slot` fits; a model to unload first; False: every model in the way is busy."""
        others = [s for s in self.slots if s is not slot and (s.loaded or s.loading)]
        limit = self.settings.max_loaded_models
        fits = limit is None or len(others) < limit
        budget = self.settings.max_loaded_models_mb
        if budget is not None:
            used = sum(s.weights_bytes for s in others)
            fits = fits and (used + slot.weights_bytes) / 1e6 <= budget
        if fits:
            return None
        idle = [s for s in others if s.loaded and not s.busy and not s.scheduler.job_count]
        return min(idle, key=lambda s: s.last_used) if idle else False

    def _full_message(self, slot: ModelSlot) -> str:
        loaded = ", ".join(s.public_id for s in self.slots if s.loaded and s is not slot)
        return (
            f"no room to load {slot.public_id}: the loaded models ({loaded}) are all busy "
            "(MAX_LOADED_MODELS / MAX_LOADED_MODELS_MB); try again shortly"
        )

    async def unload(self, slot: ModelSlot) -> None:
        """Unload now; `ModelInUse` while it has work."""
        async with self._room:
            slot.unload()

    def _settings_notes(self) -> list[str]:
        notes = []
        settings = self.settings
        if settings.stride_length_s is not None:
            notes.append("STRIDE_LENGTH_S has no effect: windows are cut at speech pauses")
        if settings.max_new_tokens is not None:
            notes.append("MAX_NEW_TOKENS has no effect: dense speech is never truncated")
        return notes

    def close(self) -> None:
        for slot in self.slots:
            slot.close()
        self._loader.shutdown(wait=False, cancel_futures=True)


__all__ = ["ModelInUse", "ModelNotReady", "ModelNotServed", "ModelRegistry", "ModelState"]
