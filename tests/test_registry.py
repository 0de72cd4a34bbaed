"""The model registry's rules, without loading a model: which slot a name means, each model's
TTL, and which model is evicted to make room (slots are marked loaded by hand)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from asrd.audio_lanes import AudioLanes
from asrd.config import ConfigError, load_settings
from asrd.registry import ModelNotServed, ModelRegistry
from asrd.slot import ModelNotReady, ModelSlot


@pytest.fixture
def make() -> Iterator:
    made: list[ModelRegistry] = []

    def build(**overrides: object) -> ModelRegistry:
        settings = load_settings(model_id="tiny.en", **overrides)
        registry = ModelRegistry(settings, AudioLanes(settings))
        made.append(registry)
        return registry

    yield build
    for registry in made:
        registry.close()


def pretend_loaded(slot: ModelSlot, last_used: float, *, busy: bool = False) -> None:
    slot._model = object()  # type: ignore[assignment]
    slot.last_used = last_used
    slot._active_jobs = int(busy)


def test_names_find_their_model(make) -> None:
    registry = make(models=["base", "TINY.EN", "openai/whisper-small"])
    served = [slot.public_id for slot in registry.slots]
    assert served == ["tiny.en", "base", "openai/whisper-small"]
    tiny, base, small = registry.slots
    assert registry.get(None) is tiny and registry.get(" ") is tiny
    assert registry.get("whisper-1") is tiny  # the default aliases mean MODEL_ID
    assert registry.get("Systran/faster-whisper-base") is base
    assert registry.get("small") is small and registry.get("Systran/faster-whisper-small") is small
    with pytest.raises(ModelNotServed) as excinfo:
        registry.get("large-v3")
    assert "`tiny.en`, `base`, `openai/whisper-small`" in str(excinfo.value)


def test_aliases_may_name_any_served_model(make) -> None:
    registry = make(models=["base"], model_aliases="fast=tiny.en,multi=base,big=large-v3,whisper-1")
    tiny, base = registry.slots
    assert registry.get("fast") is tiny and registry.get("multi") is base
    assert registry.get("whisper-1") is tiny
    with pytest.raises(ModelNotServed, match=r"alias .* of `large-v3`"):
        registry.get("big")
    assert registry.names.aliases_of(1) == ["multi"]


def test_each_model_has_its_ttl(make) -> None:
    registry = make(models=["base", "small"], unload_model_after_s=60, model_ttl_s=120,
                    model_ttls="small=-1,tiny.en=5")  # fmt: skip
    assert [slot.ttl_s for slot in registry.slots] == [5, 120, None]
    assert make(models=["base"]).slots[0].ttl_s is None  # UNLOAD_MODEL_AFTER_S unset: never


def test_preloading_a_model_not_served_is_a_config_error(make) -> None:
    with pytest.raises(ConfigError, match="PRELOAD_MODELS"):
        make(models=["base"], preload_models=["small"])


def test_the_least_recently_used_idle_model_makes_room(make) -> None:
    registry = make(models=["base", "small"], max_loaded_models=2)
    tiny, base, small = registry.slots
    pretend_loaded(tiny, last_used=1.0)
    pretend_loaded(base, last_used=2.0)

    async def main() -> None:
        await registry._make_room(small)

    asyncio.run(main())
    assert not tiny.loaded and base.loaded  # the older one went


def test_busy_models_are_never_evicted(make) -> None:
    registry = make(models=["base", "small"], max_loaded_models=2)
    tiny, base, small = registry.slots
    pretend_loaded(tiny, last_used=1.0, busy=True)
    pretend_loaded(base, last_used=2.0)

    async def main() -> None:
        await registry._make_room(small)  # base goes: tiny is busy
        assert tiny.loaded and not base.loaded
        pretend_loaded(base, last_used=3.0, busy=True)
        with pytest.raises(ModelNotReady, match="all busy") as excinfo:
            await registry._make_room(small)
        assert excinfo.value.retry_after_s

    asyncio.run(main())


def test_the_memory_budget_counts_weights(make) -> None:
    # tiny ~75 MB, base ~145 MB, small ~484 MB (estimated from the names until found on disk)
    registry = make(models=["base", "small"], max_loaded_models_mb=700)
    tiny, base, small = registry.slots
    pretend_loaded(tiny, last_used=1.0)
    pretend_loaded(base, last_used=2.0)

    async def main() -> None:
        await registry._make_room(small)  # 75 + 145 + 484 > 700: tiny (oldest) goes
        assert not tiny.loaded and base.loaded
        base.size_bytes = 300_000_000  # measured: now base must go too
        pretend_loaded(tiny, last_used=0.5)
        await registry._make_room(small)
        assert not tiny.loaded and not base.loaded

    asyncio.run(main())
