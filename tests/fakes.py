"""A fake model registry for fast API tests: the routes, forms, formats and error mapping run
for real (in-process, real audio decoding), the models answer canned transcripts. End-to-end
tests use the real models; these only check what the HTTP layer does with an answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from fastapi.testclient import TestClient

from asrd.api import deps
from asrd.app import create_app
from asrd.config import load_settings
from asrd.devices import DeviceChoice
from asrd.models import ModelNames
from asrd.registry import ModelRegistry
from asrd.slot import ModelNotReady, ModelState
from asrd.transcript import Segment, TranscribeOptions, Transcript, Word


def canned(duration: float, options: TranscribeOptions) -> Transcript:
    """Two segments with word timings, whatever the audio."""
    words = [Word(0.0, 0.5, " Hello"), Word(0.5, 1.0, " world."), Word(1.5, 2.0, " Bye.")]
    segments = [
        Segment(0.0, 1.0, " Hello world.", id=0, words=words[:2]),
        Segment(1.5, 2.0, " Bye.", id=1, words=words[2:]),
    ]
    return Transcript(segments, options.language or "en", duration, task=options.task)


@dataclass
class FakeSlot:
    public_id: str
    multilingual: bool = True
    is_default: bool = False
    loaded: bool = True
    busy: bool = False
    error: str | None = None
    failure: Exception | None = None  # raised by transcribe/stream when set
    calls: list[TranscribeOptions] = field(default_factory=list)
    device: DeviceChoice = field(default_factory=lambda: DeviceChoice("cpu", "int8"))
    state: ModelState = ModelState.READY
    weights_bytes: int = 75_000_000
    ttl_s: float | None = None
    accepting: bool = True
    loaded_once: bool = True

    @property
    def tasks(self) -> list[str]:
        return ["transcribe", "translate"] if self.multilingual else ["transcribe"]

    @property
    def languages(self) -> list[str]:
        return ["de", "en", "fr"] if self.multilingual else ["en"]

    def check_language(self, language: str | None) -> None:
        if language and language != "en" and not self.multilingual:
            raise ValueError(f"the model {self.public_id} is English-only")

    def check_task(self, task: str) -> None:
        if task == "translate" and not self.multilingual:
            raise ValueError(f"the model {self.public_id} is English-only: it can't translate")

    def in_use(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()  # type: ignore[return-value]

    async def transcribe(
        self, samples: np.ndarray, options: TranscribeOptions, **_: object
    ) -> Transcript:
        self.calls.append(options)
        if self.failure is not None:
            raise self.failure
        return canned(len(samples) / 16_000, options)

    async def stream(
        self, samples: np.ndarray, options: TranscribeOptions, *, streaming: bool = True
    ) -> AsyncIterator[Segment | Transcript]:
        transcript = await self.transcribe(samples, options)
        for segment in transcript.segments:
            yield segment
        yield transcript


class FakeRegistry:
    def __init__(self, *slots: FakeSlot):
        self.slots = list(slots)
        self.slots[0].is_default = True
        self.names = ModelNames([(s.public_id, s.public_id) for s in slots], {"whisper-1": ""})

    @property
    def default(self) -> FakeSlot:
        return self.slots[0]

    get = ModelRegistry.get  # the real lookup, over these slots and names

    @property
    def loaded(self) -> list[FakeSlot]:
        return [slot for slot in self.slots if slot.loaded]


@contextmanager
def fake_server(*slots: FakeSlot, **settings: object) -> Iterator[TestClient]:
    """The real app, in-process, with `slots` as its models (no model is ever loaded)."""
    app = create_app(load_settings(model_id="tiny.en", load_model_on_startup=False, **settings))
    registry = FakeRegistry(*slots)
    app.dependency_overrides[deps.get_models] = lambda: registry
    with TestClient(app) as client:
        yield client


__all__ = ["FakeRegistry", "FakeSlot", "ModelNotReady", "canned", "fake_server"]
