"""One live transcription session: the client's events in, OpenAI's server events out.

Audio is converted and scored for speech off the event loop (one thread per server for
every session: a few milliseconds per append). The open utterance is decoded again as it
grows, at low priority on the model's scheduler (`background`: those re-decodes fill the room
other requests leave); the words two successive hypotheses agree on go out as append-only
deltas. A finished turn is decoded as an ordinary short request, batched and packed with
everyone else's, and its `completed` event follows the previous turn's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE
from ..languages import UnknownLanguage, language_code
from ..registry import ModelNotServed, ModelRegistry
from ..slot import ModelNotReady, ModelSlot, Priority
from ..transcript import TranscribeOptions, Transcript
from ..vad import WINDOW, StreamingVad
from .audio import InputConverter
from .captions import StablePrefix
from .protocol import (
    EventError,
    SessionConfig,
    Shape,
    apply_update,
    error_event,
    event,
    new_id,
    session_json,
    user_item,
)
from .ticker import PartialTicker
from .turns import SpeechStarted, SpeechStopped, TurnDetector

log = logging.getLogger(__name__)

MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less than 100 ms of audio
# A re-decode of the open turn whose audio reaches this far into the silence that then ends
# the turn heard all of its speech: its text is the turn's final text (no decode after the
# turn ends, so `completed` follows `speech_stopped` at once; one still on its way is promoted
# to normal priority). One is started as soon as the silence is this long.
COVERED_S = 0.15
# A multilingual model's language, found in a turn this long with this much certainty, is
# kept for the session's next turns (when the client gave none): no detection pass for each
# of their re-decodes, and short turns aren't decoded alone for want of a sure language.
SURE_LANGUAGE_S = 2.0
SURE_LANGUAGE = 0.9
PARSE_OFF_LOOP_BYTES = 256 * 1024  # bigger messages are parsed on the session thread


@dataclass(frozen=True)
class SessionLimits:
    max_buffer_bytes: int  # the uncommitted audio, at 16 kHz 16-bit
    partial_interval_s: float  # new audio between two re-decodes of the open utterance
    max_session_s: float  # how long a session may last, and how much audio it may send


@dataclass
class SessionHooks:
    """Metrics: audio received, speech end to `completed`, speech start to the first delta."""

    audio: Callable[[str, float], None] = lambda model, seconds: None
    completed: Callable[[str, float], None] = lambda model, seconds: None
    first_delta: Callable[[str, float], None] = lambda model, seconds: None


class SessionOver(Exception):
    """The session must end (a limit): closed with `code` and `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class SampleBuffer:
    """The uncommitted audio, 16 kHz int16, addressed in samples since the session's start."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.start = self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.end += len(samples)

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, np.int16)
        whole = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [whole]
        return whole[start - self.start : end - self.start].copy()

    def drop_before(self, position: int) -> None:
        position = min(max(position, self.start), self.end)
        if position == self.start:
            return
        kept = self.slice(position, self.end)
        self._chunks = [kept] if len(kept) else []
        self.start = position


class RealtimeSession:
    def __init__(
        self,
        *,
        models: ModelRegistry,
        executor: Executor,
        limits: SessionLimits,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        shape: Shape = "ga",
        model: str | None = None,
        hooks: SessionHooks | None = None,
        ticker: PartialTicker | None = None,
    ):
        self.models, self.executor, self.limits = models, executor, limits
        self.send, self.shape = send, shape
        self.hooks = hooks or SessionHooks()
        # Re-decodes start on the shared tick (batched with other sessions'); without one, as
        # audio arrives. A pause starts one at once either way (the turn may be ending).
        self.ticker = ticker
        self.id = new_id("sess")
        self.expires_at = int(time.time() + limits.max_session_s)
        self.slot: ModelSlot = models.get(model)
        self.config = SessionConfig(model=model or self.slot.public_id)
        self._hold = contextlib.AsyncExitStack()
        self._converter = InputConverter(self.config.format)
        self._vad: StreamingVad | None = None
        self._vad_origin = 0
        self._turns: TurnDetector | None = None
        self.buffer = SampleBuffer()
        self.item_id = new_id("item")
        self.previous_item_id: str | None = None
        self._utterance_start: int | None = None  # server VAD: where the open turn's audio starts
        self._speech_started_at = 0.0  # monotonic, for the first-delta metric
        self._captions = StablePrefix()
        self._partial_task: asyncio.Task | None = None
        self._partial_priority = Priority()
        self._partial_length = 0  # samples of the open utterance at its last re-decode
        self._partial_end = 0  # where the audio of the latest re-decode ends (session samples)
        self._heard: tuple[int, Transcript] | None = None  # the latest re-decode, its audio end
        # A multilingual model's language, once a turn has made it clear (when not given).
        self._language: str | None = None
        self._final_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._apply_turn_detection()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Hold the model (loading it if needed) and greet the client."""
        await self._hold.enter_async_context(self.slot.in_use())
        if self.ticker is not None:
            self.ticker.add(self._maybe_partial)
        kind = "transcription_session.created" if self.shape == "beta" else "session.created"
        await self.send(event(kind, session=self._session_json(self.shape)))

    async def close(self) -> None:
        """Stop everything in progress (jobs leave the scheduler at their next batch)."""
        if self.ticker is not None:
            self.ticker.discard(self._maybe_partial)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._hold.aclose()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def busy(self) -> bool:
        """A turn is being decoded (a client waiting for it is not idle)."""
        return self._final_task is not None and not self._final_task.done()

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the turns being decoded to be sent."""
        if self._final_task is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._final_task), timeout_s)

    # --- client events -------------------------------------------------------------------------

    async def handle(self, message: str) -> None:
        """One client event; a bad one is answered with an `error` event, and the session
        goes on."""
        client_event_id = None
        try:
            data = await self._parse(message)
            if isinstance(data.get("event_id"), str):
                client_event_id = data["event_id"]
            kind = data.get("type")
            if kind == "input_audio_buffer.append":
                await self._append(data.get("audio"))
            elif kind in ("session.update", "transcription_session.update"):
                shape: Shape = "ga" if kind == "session.update" else "beta"
                await self._update(data.get("session"), shape)
            elif kind == "input_audio_buffer.commit":
                await self._commit_by_client()
            elif kind == "input_audio_buffer.clear":
                await self._clear()
            elif not isinstance(kind, str):
                raise EventError("an event needs a `type`", "type", "missing_required_parameter")
            else:
                raise EventError(
                    f"event type {kind[:64]!r} is not supported in a transcription session: send "
                    "`session.update`, `input_audio_buffer.append`, `.commit` or `.clear`",
                    "type",
                    "invalid_event",
                )
        except EventError as exc:
            await self.send(
                error_event(exc.message, code=exc.code, param=exc.param, event_id=client_event_id)
            )

    async def _parse(self, message: str) -> dict[str, Any]:
        try:
            if len(message) > PARSE_OFF_LOOP_BYTES:
                loop = asyncio.get_running_loop()
                data = await loop.run_in_executor(self.executor, json.loads, message)
            else:
                data = json.loads(message)
        except (ValueError, RecursionError):
            raise EventError("the event is not valid JSON", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise EventError("an event must be a JSON object", None, "invalid_json")
        return data

    async def _update(self, session: Any, shape: Shape) -> None:
        config = apply_update(self.config, session, shape)
        slot = self.slot
        if config.model != self.config.model:
            try:
                slot = self.models.get(config.model)
            except ModelNotServed as exc:
                raise EventError(str(exc), _param(shape, "model"), "model_not_found") from None
        if config.language:
            try:
                config.language = language_code(config.language)
                slot.check_language(config.language)
            except (UnknownLanguage, ValueError) as exc:
                raise EventError(str(exc), _param(shape, "language"), "invalid_language") from None
        if slot is not self.slot or config.language != self.config.language:
            self._language = None  # learnt again, for this model or language
        if slot is not self.slot:
            hold = contextlib.AsyncExitStack()
            try:
                await hold.enter_async_context(slot.in_use())
            except ModelNotReady as exc:
                raise EventError(str(exc), _param(shape, "model"), "model_not_ready") from None
            await self._hold.aclose()
            self._hold, self.slot = hold, slot
        if config.format != self.config.format:
            self._converter = InputConverter(config.format)
        self.config = config
        self._apply_turn_detection()
        kind = "transcription_session.updated" if shape == "beta" else "session.updated"
        self.shape = shape
        await self.send(event(kind, session=self._session_json(shape)))

    def _session_json(self, shape: Shape) -> dict[str, Any]:
        return session_json(self.config, self.id, self.expires_at, shape)

    def _apply_turn_detection(self) -> None:
        turns = self.config.turn_detection
        if turns is None:
            self._vad = self._turns = None
            self._utterance_start = None
            return
        if self._turns is None:
            self._vad, self._vad_origin = None, self.buffer.end
            self._turns = TurnDetector(turns)
        self._turns.settings = turns

    async def _append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise EventError("`audio` must be base64-encoded audio", "audio", "invalid_value")
        if not audio:
            return
        incoming = len(audio) * 3 / 4 / self._converter.bytes_per_second()
        buffered = len(self.buffer) * 2 + int(incoming * SAMPLE_RATE * 2)
        if self._turns is None and buffered > self.limits.max_buffer_bytes:
            raise EventError(
                f"the input audio buffer would hold more than {self.limits.max_buffer_bytes} "
                "bytes of 16 kHz audio (REALTIME_MAX_BUFFER_MB): commit or clear it first",
                "audio",
                "input_audio_buffer_full",
            )
        if (self.buffer.end / SAMPLE_RATE) + incoming > self.limits.max_session_s:
            raise SessionOver(1008, "the session sent more audio than REALTIME_MAX_SESSION_S")
        loop = asyncio.get_running_loop()
        samples, probabilities = await loop.run_in_executor(self.executor, self._score, audio)
        self.buffer.append(samples)
        self.hooks.audio(self.slot.public_id, len(samples) / SAMPLE_RATE)
        if self._turns is not None and probabilities is not None:
            vad = self._vad
            assert vad is not None
            origin = self._vad_origin + (vad.windows - len(probabilities)) * WINDOW
            for turn in self._turns.push(probabilities, origin):
                if isinstance(turn, SpeechStarted):
                    await self._speech_started(turn.at)
                elif isinstance(turn, SpeechStopped):
                    await self._speech_stopped(turn)
            if not self._turns.speaking:  # keep just the prefix padding before speech
                keep = self._turns.settings.prefix_padding_ms * SAMPLE_RATE // 1000
                self.buffer.drop_before(self.buffer.end - keep)
        self._maybe_partial(on_tick=self.ticker is None)

    def _score(self, audio: str) -> tuple[np.ndarray, np.ndarray | None]:
        """On the session thread: decode the base64, convert the audio, score its speech
        (server VAD)."""
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("`audio` is not valid base64", "audio", "invalid_value") from None
        samples = self._converter.convert(data)
        if self._turns is None:
            return samples, None
        if self._vad is None:
            self._vad = StreamingVad()
        return samples, self._vad.feed(samples)

    # --- turns ---------------------------------------------------------------------------------

    async def _speech_started(self, at: int) -> None:
        turns = self.config.turn_detection
        padding = (turns.prefix_padding_ms if turns else 0) * SAMPLE_RATE // 1000
        self._utterance_start = max(self.buffer.start, at - padding)
        self.buffer.drop_before(self._utterance_start)
        self._speech_started_at = time.monotonic()
        await self.send(
            event(
                "input_audio_buffer.speech_started",
                audio_start_ms=at * 1000 // SAMPLE_RATE,
                item_id=self.item_id,
            )
        )

    async def _speech_stopped(self, turn: SpeechStopped) -> None:
        await self.send(
            event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=turn.at * 1000 // SAMPLE_RATE,
                item_id=self.item_id,
            )
        )
        start = self._utterance_start if self._utterance_start is not None else self.buffer.start
        samples = self.buffer.slice(start, turn.detected)
        self.buffer.drop_before(turn.detected)
        self._utterance_start = None
        covered = turn.at + int(COVERED_S * SAMPLE_RATE)
        heard = None
        if self._heard is not None and self._heard[0] >= covered:
            heard = self._heard[1]
        elif self._partial_end >= covered and self._partial_task is not None:
            heard = self._partial_task  # on its way: now the turn's final decode
            self._partial_priority.promote()
        await self._commit(samples, speech_known=True, heard=heard)

    async def _commit_by_client(self) -> None:
        start = self._utterance_start if self._utterance_start is not None else self.buffer.start
        if (self.buffer.end - start) < MIN_COMMIT_S * SAMPLE_RATE:
            raise EventError(
                f"buffer too small: at least {MIN_COMMIT_S * 1000:g} ms of audio is needed to "
                "commit",
                None,
                "input_audio_buffer_commit_empty",
            )
        samples = self.buffer.slice(start, self.buffer.end)
        self.buffer.drop_before(self.buffer.end)
        if self._turns is not None:
            self._turns.reset()
        self._utterance_start = None
        await self._commit(samples, speech_known=False)

    async def _clear(self) -> None:
        self.buffer.drop_before(self.buffer.end)
        if self._turns is not None:
            self._turns.reset()
        self._utterance_start = None
        self._next_item()
        await self.send(event("input_audio_buffer.cleared"))

    def _next_item(self, keep: asyncio.Task | None = None) -> str:
        """A new pending item; returns the one that was pending. Its re-decode in progress is
        stopped, unless it is `keep` (its text may be the turn's final text)."""
        item, self.item_id = self.item_id, new_id("item")
        self._captions, self._partial_length = StablePrefix(), 0
        self._partial_end, self._heard = 0, None
        if self._partial_task is not None and self._partial_task is not keep:
            self._partial_task.cancel()
        self._partial_task = None
        return item

    async def _commit(
        self,
        samples: np.ndarray,
        *,
        speech_known: bool,
        heard: Transcript | asyncio.Task | None = None,
    ) -> None:
        committed_at = time.monotonic()
        keep = heard if isinstance(heard, asyncio.Task) else None
        previous, item = self.previous_item_id, self._next_item(keep)
        self.previous_item_id = item
        await self.send(
            event("input_audio_buffer.committed", previous_item_id=previous, item_id=item)
        )
        if self.shape == "beta":
            added = event("conversation.item.created", previous_item_id=previous,
                          item=user_item(item, None))  # fmt: skip
        else:
            added = event("conversation.item.added", previous_item_id=previous,
                          item=user_item(item, None, "in_progress"))  # fmt: skip
        await self.send(added)
        before = self._final_task
        speech = [(0.0, len(samples) / SAMPLE_RATE)] if speech_known else None
        self._final_task = self._spawn(
            self._final(item, previous, samples, speech, before, committed_at, heard)
        )

    def _options(self) -> TranscribeOptions:
        language = self.config.language or self._language
        return TranscribeOptions(language=language, prompt=self.config.prompt or None)

    async def _final(
        self,
        item: str,
        previous: str | None,
        samples: np.ndarray,
        speech: list[tuple[float, float]] | None,
        before: asyncio.Task | None,
        committed_at: float,
        heard: Transcript | asyncio.Task | None = None,
    ) -> None:
        slot, failure, text = self.slot, None, ""
        try:
            transcript = await self._final_text(samples, speech, heard)
            text = transcript.text
            if (
                self.config.language is None
                and slot.multilingual
                and transcript.duration >= SURE_LANGUAGE_S
                and transcript.language_probability >= SURE_LANGUAGE
            ):
                self._language = transcript.language
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the model failed, or can't be had: this turn fails
            log.warning("a live turn failed: %s", exc)
            failure = exc
        if before is not None:  # completed events in the order of the turns
            with contextlib.suppress(Exception):
                await before
        if failure is not None:
            message = str(failure) if isinstance(failure, ModelNotReady) else "transcription failed"
            error = {"type": "server_error", "code": "transcription_failed", "message": message,
                     "param": None}  # fmt: skip
            await self.send(event("conversation.item.input_audio_transcription.failed",
                                  item_id=item, content_index=0, error=error))  # fmt: skip
            return
        usage = {"type": "duration", "seconds": round(len(samples) / SAMPLE_RATE, 3)}
        await self.send(
            event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item,
                content_index=0,
                transcript=text,
                usage=usage,
            )
        )
        self.hooks.completed(slot.public_id, time.monotonic() - committed_at)
        if self.shape == "ga":
            done = event("conversation.item.done", previous_item_id=previous,
                         item=user_item(item, text))  # fmt: skip
            await self.send(done)

    async def _final_text(
        self,
        samples: np.ndarray,
        speech: list[tuple[float, float]] | None,
        heard: Transcript | asyncio.Task | None,
    ) -> Transcript:
        """The turn's text: what a re-decode that covered all of its speech heard, else (or if
        that re-decode is slower) the turn decoded at normal priority."""
        if isinstance(heard, Transcript):
            return heard
        if heard is not None:
            try:
                result = await heard
            except asyncio.CancelledError:
                heard.cancel()
                raise
            if result is not None:
                return result
        return await self.slot.transcribe(samples, self._options(), speech=speech)

    # --- partial text --------------------------------------------------------------------------

    def _maybe_partial(self, on_tick: bool = True) -> None:
        """Decode the open utterance again once it has grown by the partial interval (on a
        tick), or at once in a pause, unless its previous re-decode is still on its way."""
        if self._partial_task is not None and not self._partial_task.done():
            return
        early = False
        if self._turns is not None:
            if not self._turns.speaking or self._utterance_start is None:
                return
            start = self._utterance_start
            # The speaker paused: hear the whole turn now, in case the pause ends it.
            silence = self._turns.silence_since
            covered = silence is not None and self._partial_end >= silence + COVERED_S * SAMPLE_RATE
            early = (
                silence is not None
                and not covered
                and self.buffer.end - silence >= COVERED_S * SAMPLE_RATE
            )
        else:
            start = self.buffer.start
        length = self.buffer.end - start
        grown = length - self._partial_length >= self.limits.partial_interval_s * SAMPLE_RATE
        if not early and not (on_tick and grown):
            return
        self._partial_length, self._partial_end = length, self.buffer.end
        samples = self.buffer.slice(start, self.buffer.end)
        speech = [(0.0, length / SAMPLE_RATE)] if self._turns is not None else None
        self._partial_priority = Priority()
        self._partial_task = self._spawn(
            self._partial(self.item_id, samples, speech, self._partial_priority)
        )

    async def _partial(
        self,
        item: str,
        samples: np.ndarray,
        speech: list[tuple[float, float]] | None,
        priority: Priority,
    ) -> Transcript | None:
        """Decode the open turn again (low priority); send the newly agreed words. Returns
        what it heard (None if it failed)."""
        end = self._partial_end
        slot = self.slot
        try:
            transcript = await slot.transcribe(
                samples, self._options(), background=priority, speech=speech
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # partial text is best effort: the turn's final decode decides
            log.debug("a partial re-decode failed: %s", exc)
            return None
        if item != self.item_id:
            return transcript  # committed meanwhile: maybe the turn's final text
        self._heard = (end, transcript)
        first = not self._captions.text
        delta = self._captions.update(transcript.text)
        if delta:
            await self.send(
                event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item,
                    content_index=0,
                    delta=delta,
                )
            )
            if first and self._turns is not None:
                self.hooks.first_delta(slot.public_id, time.monotonic() - self._speech_started_at)
        return transcript


def _param(shape: Shape, name: str) -> str:
    if shape == "beta":
        return f"session.input_audio_transcription.{name}"
    return f"session.audio.input.transcription.{name}"
