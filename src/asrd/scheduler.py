"""The decoding scheduler: windows from every request, batched together, checked like the
sequential pipeline checks them.

Each request's audio is cut into windows of at most 30 s at speech pauses (Silero VAD). One
thread decodes them in batches of up to `BATCH_SIZE`, taking windows round-robin across the
requests waiting (a short request is not stuck behind a long file), after a short gathering
wait (`BATCH_WAIT_MS`). Windows are decoded *with* timestamps, then checked:

- silence (high no-speech probability and low log-probability) gives no text;
- a failed decoding (compression ratio over 2.4, or mean log-probability under -1) is decoded
  again at the next fallback temperature, batched with the other failures;
- coverage: speech that VAD found inside the window but no decoded segment covers (Whisper
  ending a window early, or skipping an utterance: the batched pipeline's lost words) is cut
  out and decoded again in a new window.

Results are put back in order per request, with absolute timestamps, and handed out window by
window as they complete (streaming).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens
from faster_whisper.vad import VadOptions

from .audio import SAMPLE_RATE, to_float32
from .vad import speech_spans

log = logging.getLogger(__name__)

IDLE_TRIM_AFTER_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the memory freed by finished requests back to the system (glibc keeps it in its
    heaps otherwise, and an idle server would look as big as its busiest moment)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


WINDOW_S = 30.0
N_FRAMES = 3000  # mel frames in a 30 s window
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_GAP_S = 2.0  # a longer pause starts a new window (the silence isn't decoded)
COVERAGE_SLACK_S = 0.3  # speech this close to a decoded segment counts as covered
MIN_UNCOVERED_S = 0.5  # uncovered speech pieces shorter than this are ignored
MIN_UNCOVERED_TOTAL_S = 0.8  # a window needs this much uncovered speech for a second pass
PAD_S = 0.25
# Short windows of different requests share one 30 s window (the encoder costs the same for
# 3 s as for 30 s): each part keeps its own time range, 2 s of silence apart.
PACK_GAP_S = 2.0
PACK_MAX_PART_S = 15.0


@dataclass(frozen=True)
class DecodeSettings:
    batch_size: int = 16
    batch_wait_ms: float = 20.0
    encode_batch_size: int = 1
    beam_size: int = 5
    best_of: int = 5
    chunk_length_s: float = WINDOW_S
    vad_filter: bool = True
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    pack_windows: bool = True


@dataclass(frozen=True)
class JobOptions:
    language: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    prompt: str | None = None
    temperature: float = 0.0  # 0: the fallback schedule; above 0: that temperature only


@dataclass
class DecodedSegment:
    start: float
    end: float
    text: str
    seek: int
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[dict] | None = None


@dataclass(frozen=True)
class JobResult:
    segments: list[DecodedSegment]
    language: str
    language_probability: float


@dataclass(eq=False)
class Window:
    job: Job
    start: float  # seconds, in the request's audio
    end: float
    speech: list[tuple[float, float]]
    parent: Window | None = None
    children: list[Window] = field(default_factory=list)
    temperature_index: int = 0
    candidates: list[tuple[dict, list[DecodedSegment]]] = field(default_factory=list)
    final: list[DecodedSegment] | None = None
    solo: bool = False  # never packed with other windows (again)

    @property
    def complete(self) -> bool:
        return self.final is not None and all(child.complete for child in self.children)

    def segments(self) -> list[DecodedSegment]:
        found = list(self.final or [])
        for child in self.children:
            found += child.segments()
        return sorted(found, key=lambda s: s.start)


NO_AUDIO = np.zeros(0, dtype=np.int16)


@dataclass(eq=False)
class Job:
    samples: np.ndarray
    options: JobOptions
    windows: list[Window]
    on_segments: Callable[[list[DecodedSegment]], None] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    pending: deque[Window] = field(default_factory=deque)
    language: str | None = None
    language_probability: float = 1.0
    tokenizer: Tokenizer | None = None
    emitted: int = 0
    results: list[DecodedSegment] = field(default_factory=list)
    cancelled: bool = False
    max_per_batch: int | None = None  # streamed jobs: smaller bites, so text comes out sooner

    def cancel(self) -> None:
        """Stop at the next batch; the future is cancelled."""
        self.cancelled = True

    def release_audio(self) -> None:
        """The scheduler is done with this job: let go of its audio now. (Windows and jobs
        refer to each other, so without this the samples would wait for the cyclic garbage
        collector, and the decoded-audio budget with them.)"""
        self.samples = NO_AUDIO

    def window_at(self, start: float, end: float, speech: list[tuple[float, float]]) -> Window:
        return Window(self, start, end, speech)


def speech_windows(
    samples: np.ndarray, settings: DecodeSettings
) -> list[tuple[float, float, list]]:
    """(start, end, speech spans) of the windows to decode, in seconds, in order.

    With VAD: speech spans packed into windows of at most `chunk_length_s`, a new window at
    each pause over `MAX_GAP_S` (long silences are never decoded). Without: fixed windows.
    """
    duration = len(samples) / SAMPLE_RATE
    limit = min(settings.chunk_length_s, WINDOW_S)
    if not settings.vad_filter:
        starts = np.arange(0, duration, limit)
        return [(s, min(s + limit, duration), [(s, min(s + limit, duration))]) for s in starts]
    vad = VadOptions(max_speech_duration_s=limit, min_silence_duration_ms=160)
    # One pass over the whole audio (cutting it into independent blocks for VAD cost words at
    # the block edges: base WER 4.9% -> 8.7% with 30 s blocks), in bounded memory.
    spans = [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in speech_spans(samples, vad)]
    return pack_spans(spans, limit, duration)


def pack_spans(
    spans: list[tuple[float, float]], limit: float, duration: float
) -> list[tuple[float, float, list]]:
    windows: list[tuple[float, float, list]] = []
    for start, end in spans:
        while end - start > limit:  # VAD already splits at the limit; be safe anyway
            windows.append((start, start + limit, [(start, start + limit)]))
            start += limit
        if windows:
            w_start, w_end, w_speech = windows[-1]
            if end - w_start <= limit and start - w_end <= MAX_GAP_S:
                windows[-1] = (w_start, max(w_end, end), [*w_speech, (start, end)])
                continue
        windows.append((start, end, [(start, end)]))
    return [(round(s, 2), min(round(e, 2), duration), sp) for s, e, sp in windows]


def uncovered(window: Window, segments: list[DecodedSegment]) -> list[tuple[float, float]]:
    """The window's speech that none of `segments` covers (pieces of MIN_UNCOVERED_S or more)."""
    covered = sorted((s.start - COVERAGE_SLACK_S, s.end + COVERAGE_SLACK_S) for s in segments)
    pieces = []
    for start, end in window.speech:
        cursor = start
        for c_start, c_end in covered:
            if c_end <= cursor or c_start >= end:
                continue
            if c_start > cursor:
                pieces.append((cursor, c_start))
            cursor = max(cursor, c_end)
        if cursor < end:
            pieces.append((cursor, end))
    return [(s, e) for s, e in pieces if e - s >= MIN_UNCOVERED_S]


class Scheduler:
    """The one thread that runs the model: batches of windows from every job."""

    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        self.model: WhisperModel | None = None
        self._jobs: list[Job] = []
        self._intake: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._rotation = 0
        self._stopped = False
        self._in_flight: list[Window] = []
        self.on_batch: Callable[[int], None] | None = None  # metrics hook
        self.batches = 0
        self.batch_windows = 0
        self._thread = threading.Thread(target=self._run, name="asrd-scheduler", daemon=True)
        self._thread.start()

    # --- called from other threads -----------------------------------------------------------

    def submit(self, job: Job) -> Job:
        with self._wakeup:
            self._intake.append(job)
            self._wakeup.notify()
        return job

    @property
    def job_count(self) -> int:
        """Transcriptions holding audio in the scheduler (waiting or being decoded)."""
        return len(self._jobs) + len(self._intake)

    def stop(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()

    # --- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        trimmed = True
        while True:
            arrived: list[Job] | None = None
            with self._wakeup:
                # Once idle for IDLE_TRIM_AFTER_S, wake up once to give memory back.
                busy = self._wakeup.wait_for(
                    lambda: self._stopped or self._intake or self._has_work(),
                    None if trimmed else IDLE_TRIM_AFTER_S,
                )
                if self._stopped:
                    break
                if busy:
                    if (
                        self.settings.batch_wait_ms
                        and self._intake
                        and self._ready_count() < self.settings.batch_size
                    ):
                        # New work arrived: give its neighbours a moment to arrive too.
                        self._wakeup.wait(self.settings.batch_wait_ms / 1000)
                    arrived = list(self._intake)
                    self._intake.clear()
            if arrived is None:
                release_free_memory()  # outside the lock: submitters never wait for it
                trimmed = True
                continue
            trimmed = False
            try:
                self._step(arrived)
            except Exception:  # a bug: log it, fail nothing else, keep the thread alive
                log.exception("the scheduler hit an unexpected error")
            finally:
                # Hold no job between steps: an idle server keeps no request's audio.
                arrived.clear()
                self._in_flight = []
        for job in self._jobs + list(self._intake):
            job.future.cancel()

    def _step(self, arrived: list[Job]) -> None:
        for job in arrived:
            self._admit(job)
        batch = self._pick_batch()
        if batch:
            self._decode(batch)
        # A job cancelled mid-batch may have no window left to pick: let go of it (and its
        # audio) now, not when the next request comes.
        self._drop_cancelled()

    def _has_work(self) -> bool:
        return any(job.pending for job in self._jobs)

    def _ready_count(self) -> int:
        return sum(len(job.pending) for job in self._jobs)

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            job.release_audio()
            job.future.cancel()
            return
        try:
            self._prepare(job)
        except Exception as exc:  # the job's fault or the model's: fail it, not the thread
            log.exception("a transcription job failed to start")
            job.release_audio()
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.windows:
            self._finish(job)
            return
        job.pending.extend(job.windows)
        self._jobs.append(job)

    def _prepare(self, job: Job) -> None:
        model = self._model()
        multilingual = model.model.is_multilingual
        language = job.options.language if multilingual else "en"
        if language is None and not job.options.word_timestamps:
            return  # detected from the first window's own encoder pass (see _detect)
        if language is None and job.windows:
            first = job.windows[0]
            features = self._features(job.samples, first.start, first.end)
            language, job.language_probability, _ = model.detect_language(features=features)
        self._set_language(job, language or "en")

    def _set_language(self, job: Job, language: str) -> None:
        model = self._model()
        job.language = language
        job.tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task=job.options.task,
            language=language,
        )  # fmt: skip

    def _detect(self, items: list[list[Window]], encoder_output: ctranslate2.StorageView) -> None:
        """Set the language of jobs that didn't give one, from their first window's encoding
        (no extra encoder pass, unlike faster-whisper's separate detection)."""
        if all(item[0].job.language is not None for item in items):
            return
        found = self._model().model.detect_language(encoder_output)
        for item, probabilities in zip(items, found, strict=True):
            job = item[0].job
            if job.language is None:
                token, probability = probabilities[0]
                job.language_probability = float(probability)
                self._set_language(job, token[2:-2])  # "<|fr|>" -> "fr"

    def _model(self) -> WhisperModel:
        if self.model is None:
            raise RuntimeError("the model is not loaded")
        return self.model

    def _features(self, samples: np.ndarray, start: float, end: float) -> np.ndarray:
        return self._mel(to_float32(samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]))

    def _mel(self, chunk: np.ndarray) -> np.ndarray:
        padding = max(0, int(WINDOW_S * SAMPLE_RATE) - len(chunk)) + 160
        return self._model().feature_extractor(chunk, padding=padding)[:, :N_FRAMES]

    @staticmethod
    def _layout(item: list[Window]) -> tuple[float, float, list[float]]:
        """An item's time range and, for a pack, where each part starts inside it."""
        if len(item) == 1:
            return item[0].start, item[0].end, [item[0].start]
        offsets, length = [], 0.0
        for window in item:
            offsets.append(length)
            length += window.end - window.start + PACK_GAP_S
        return 0.0, length - PACK_GAP_S, offsets

    def _item_features(self, item: list[Window]) -> np.ndarray:
        if len(item) == 1:
            window = item[0]
            return self._features(window.job.samples, window.start, window.end)
        gap = np.zeros(int(PACK_GAP_S * SAMPLE_RATE), np.float32)
        pieces = []
        for window in item:
            samples = window.job.samples
            part = samples[int(window.start * SAMPLE_RATE) : int(window.end * SAMPLE_RATE)]
            pieces += [to_float32(part), gap]
        return self._mel(np.concatenate(pieces[:-1]))

    def _key(self, window: Window) -> tuple:
        job = window.job
        return (job.language, job.options.task, job.options.word_timestamps,
                self._temperature(window))  # fmt: skip

    def _temperature(self, window: Window) -> float:
        if window.job.options.temperature > 0:
            return window.job.options.temperature
        return FALLBACK_TEMPERATURES[window.temperature_index]

    def _pick_batch(self) -> list[Window]:
        """Round-robin across jobs, one window each per round, all with the same key."""
        self._drop_cancelled()
        active = [job for job in self._jobs if job.pending]
        if not active:
            return []
        self._rotation %= len(active)
        order = active[self._rotation :] + active[: self._rotation]
        self._rotation += 1
        key = self._key(order[0].pending[0])
        batch: list[Window] = []
        taken = dict.fromkeys(order, 0)
        # With several requests waiting, each gets an equal share of the batch: a long file
        # alone fills whole batches, but doesn't crowd out the requests that come along.
        share = max(1, self.settings.batch_size // len(order))
        # Capacity in 30 s windows: short windows will be packed several to a window.
        capacity = self.settings.batch_size * WINDOW_S
        taking = True
        while taking and capacity > 0:
            taking = False
            for job in order:
                if not job.pending or self._key(job.pending[0]) != key:
                    continue
                if job.max_per_batch is not None and taken[job] >= job.max_per_batch:
                    continue
                if taken[job] >= share or (job.language is None and taken[job]):
                    continue  # a job whose language is unknown yet sends one window
                window = job.pending.popleft()
                batch.append(window)
                taken[job] += 1
                capacity -= self._cost(window)
                taking = True
                if capacity <= 0:
                    break
        return batch

    def _packable(self, window: Window) -> bool:
        options = window.job.options
        return (
            self.settings.pack_windows
            and window.job.language is not None
            and not window.solo
            and window.parent is None
            and window.temperature_index == 0
            and not options.word_timestamps
            and not options.prompt
            and window.end - window.start <= PACK_MAX_PART_S
        )

    def _cost(self, window: Window) -> float:
        if self._packable(window):
            return window.end - window.start + PACK_GAP_S
        return WINDOW_S

    def _pack(self, batch: list[Window]) -> list[list[Window]]:
        """Group the batch's windows into model inputs: packs of short windows, or one."""
        items: list[list[Window]] = []
        open_pack: list[Window] = []
        length = 0.0
        for window in batch:
            if not self._packable(window):
                items.append([window])
                continue
            duration = window.end - window.start
            if open_pack and length + PACK_GAP_S + duration > WINDOW_S:
                items.append(open_pack)
                open_pack, length = [], 0.0
            length += (PACK_GAP_S if open_pack else 0.0) + duration
            open_pack.append(window)
        if open_pack:
            items.append(open_pack)
        return items

    def _drop_cancelled(self) -> None:
        self._jobs = [job for job in self._jobs if not self._drop_if_cancelled(job)]

    def _drop_if_cancelled(self, job: Job) -> bool:
        if job.cancelled or job.future.done():  # cancelled, or failed in an earlier batch
            job.cancelled = True
            job.pending.clear()
            job.release_audio()
            job.future.cancel()
        return job.cancelled

    def _decode(self, batch: list[Window]) -> None:
        items = self._pack(batch)
        self._in_flight = list(batch)
        try:
            items, outputs = self._generate(items)
        except Exception as exc:
            log.exception("decoding a batch of %d windows failed", len(batch))
            for job in {window.job for window in self._in_flight}:
                job.cancelled = True
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.batches += 1
        self.batch_windows += sum(map(len, items))
        if self.on_batch is not None:
            self.on_batch(sum(map(len, items)))
        for item, (output, segments) in zip(items, outputs, strict=True):
            try:
                if len(item) == 1:
                    self._check(item[0], output, segments)
                else:
                    self._check_pack(item, output, segments)
            except Exception as exc:
                log.exception("checking a window failed")
                for window in item:
                    if not window.job.future.done():
                        window.job.future.set_exception(exc)
                    window.job.cancelled = True
        for job in {window.job for item in items for window in item}:
            if not job.cancelled:
                self._emit(job)

    def _generate(
        self, items: list[list[Window]]
    ) -> tuple[list[list[Window]], list[tuple[dict, list[DecodedSegment]]]]:
        model = self._model()
        first = items[0][0]
        temperature = self._temperature(first)
        started = time.perf_counter()
        items, encoder_output = self._encode_items(items)
        self._detect(items, encoder_output)
        encoded = time.perf_counter()
        tokenizers: list[Tokenizer] = [item[0].job.tokenizer for item in items]  # type: ignore[misc]
        tokenizer = tokenizers[0]
        prompts = []
        for item, item_tokenizer in zip(items, tokenizers, strict=True):
            previous = []
            if item[0].job.options.prompt:
                previous = item_tokenizer.encode(" " + item[0].job.options.prompt.strip())
            prompts.append(model.get_prompt(item_tokenizer, previous, without_timestamps=False))
        if temperature > 0:
            sampling = dict(beam_size=1, num_hypotheses=self.settings.best_of,
                            sampling_topk=0, sampling_temperature=temperature)  # fmt: skip
        else:
            sampling = dict(beam_size=self.settings.beam_size)
        results = model.model.generate(
            encoder_output,
            prompts,
            length_penalty=1,
            max_length=model.max_length,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            return_scores=True,
            return_no_speech_prob=True,
            max_initial_timestamp_index=int(1.0 / model.time_precision),
            **sampling,
        )
        generated = time.perf_counter()
        log.debug(
            "batch of %d windows in %d inputs at temperature %.1f: features and encoder "
            "%.2f s, decoder %.2f s",
            sum(map(len, items)), len(items), temperature, encoded - started,
            generated - encoded,
        )  # fmt: skip
        outputs = []
        per_item_segments = []
        for item, result, tokenizer in zip(items, results, tokenizers, strict=True):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            text_tokens = [t for t in tokens if t < tokenizer.eot]
            output = dict(
                tokens=tokens,
                avg_logprob=avg_logprob,
                no_speech_prob=result.no_speech_prob,
                compression_ratio=get_compression_ratio(tokenizer.decode(text_tokens).strip()),
            )
            start, end, _ = self._layout(item)
            seek = round(start * model.frames_per_second)
            subsegments, _, _ = model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=tokens,
                time_offset=seek / model.frames_per_second,
                segment_size=int(np.ceil(end - start) * model.frames_per_second),
                segment_duration=end - start,
                seek=seek,
            )
            outputs.append(output)
            per_item_segments.append(subsegments)
        if first.job.options.word_timestamps:  # never packed, language known: one tokenizer
            model.add_word_timestamps(
                per_item_segments,
                tokenizers[0],
                encoder_output,
                [int(np.ceil(i[0].end - i[0].start) * model.frames_per_second) for i in items],
                "\"'“¿([{-",
                "\"'.。,，!！?？:：”)]}、",  # noqa: RUF001 (Whisper's own punctuation)
                0.0,
            )
        decoded = []
        for item, output, subsegments, tokenizer in zip(
            items, outputs, per_item_segments, tokenizers, strict=True
        ):
            start, end, _ = self._layout(item)
            segments = []
            for sub in subsegments:
                text = tokenizer.decode([t for t in sub["tokens"] if t < tokenizer.eot])
                if not text.strip():
                    continue
                segments.append(
                    DecodedSegment(
                        start=min(max(sub["start"], start), end),
                        end=min(max(sub["end"], start), end),
                        text=text,
                        seek=sub["seek"],
                        tokens=list(sub["tokens"]),
                        temperature=temperature,
                        avg_logprob=float(output["avg_logprob"]),
                        compression_ratio=get_compression_ratio(text),
                        no_speech_prob=float(output["no_speech_prob"]),
                        words=sub.get("words"),
                    )
                )
            decoded.append((output, segments))
        return items, decoded

    def _check_pack(self, item: list[Window], output: dict, segments: list[DecodedSegment]) -> None:
        """Hand a pack's segments back to its parts; a part the pack didn't serve cleanly
        (a failed check, a segment running across two parts, speech left without text) is
        decoded again alone."""
        settings = self.settings
        # The log-probability is the whole pack's; repetitiveness is judged part by part below
        # (requests with the same words would look repetitive together).
        failed = output["avg_logprob"] < settings.log_prob_threshold
        _, _, offsets = self._layout(item)
        spans = [(o, o + w.end - w.start) for o, w in zip(offsets, item, strict=True)]
        owned: list[list[DecodedSegment]] = [[] for _ in item]
        redo = set(range(len(item))) if failed else set()
        for segment in [] if failed else segments:
            overlaps = [min(segment.end, e) - max(segment.start, s) for s, e in spans]
            hit = [i for i, o in enumerate(overlaps) if o > 0.2]
            if len(hit) > 1:
                redo.update(hit)
            elif hit:
                owned[hit[0]].append(segment)
        for index, segments_of_part in enumerate(owned):
            text = "".join(segment.text for segment in segments_of_part).strip()
            if text and get_compression_ratio(text) > settings.compression_ratio_threshold:
                redo.add(index)
        for index, window in enumerate(item):
            if index in redo:
                window.solo = True
                window.job.pending.appendleft(window)
                continue
            shift = window.start - offsets[index]
            mapped = [
                dataclasses.replace(
                    s,
                    start=min(max(s.start + shift, window.start), window.end),
                    end=min(max(s.end + shift, window.start), window.end),
                    seek=round(window.start * 100),
                )
                for s in owned[index]
            ]
            if sum(e - s for s, e in uncovered(window, mapped)) >= MIN_UNCOVERED_TOTAL_S:
                # Speech the pack's text left out: decode the part alone. (A second pass on
                # the gap, as for solo windows, repeats words when the pack's timings are off.)
                window.solo = True
                window.job.pending.appendleft(window)
                continue
            window.final = mapped

    def _encode_items(
        self, items: list[list[Window]]
    ) -> tuple[list[list[Window]], ctranslate2.StorageView]:
        """Encode the batch's inputs. On a CPU they are encoded one at a time, and a request
        that arrives meanwhile joins this batch: the inputs not encoded yet go back to their
        queues to make room, so a newcomer waits at most one encoder pass, not a whole batch.
        """
        model = self._model()
        if self.settings.encode_batch_size > 1 or model.model.device != "cpu":
            features = np.stack([self._item_features(item) for item in items])
            return items, self._encode(features)
        done: list[list[Window]] = []
        parts = []
        queue = deque(items)
        joined = False
        while queue:
            if done and not joined and self._intake and self._preemptible(queue):
                joined = True
                queue = deque(self._make_room(list(queue), done))
            item = queue.popleft()
            parts.append(np.array(model.encode(self._item_features(item)[None])))
            done.append(item)
        return done, ctranslate2.StorageView.from_array(np.concatenate(parts))

    @staticmethod
    def _preemptible(waiting: deque[list[Window]]) -> bool:
        """Only windows of long requests (several windows) give way to newcomers."""
        return all(len(window.job.windows) > 1 for item in waiting for window in item)

    def _make_room(self, waiting: list[list[Window]], done: list[list[Window]]) -> list:
        """Admit newcomers; their first windows replace this batch's inputs not yet encoded."""
        with self._wakeup:
            arrived = list(self._intake)
            self._intake.clear()
        for job in arrived:
            self._admit(job)
        key = self._key(done[0][0])
        newcomers = [
            job.pending.popleft()
            for job in arrived
            if job in self._jobs and job.pending and self._key(job.pending[0]) == key
        ]
        if not newcomers:
            return waiting
        for item in reversed(waiting):  # back to the front of their queues, in order
            for window in reversed(item):
                window.job.pending.appendleft(window)
        capacity = max(1, self.settings.batch_size - len(done))
        self._in_flight += newcomers
        fresh = self._pack(newcomers)
        for item in fresh[capacity:]:
            for window in reversed(item):
                window.job.pending.appendleft(window)
        return fresh[:capacity]

    def _encode(self, features: np.ndarray) -> ctranslate2.StorageView:
        model = self._model()
        step = self.settings.encode_batch_size
        if step >= len(features) or model.model.device != "cpu":
            return model.encode(features)
        # On a CPU the encoder gets slower per window in bigger batches; the decoder doesn't.
        parts = [
            np.array(model.encode(features[i : i + step])) for i in range(0, len(features), step)
        ]
        return ctranslate2.StorageView.from_array(np.concatenate(parts))

    def _check(self, window: Window, output: dict, segments: list[DecodedSegment]) -> None:
        settings = self.settings
        silence = (
            output["no_speech_prob"] > settings.no_speech_threshold
            and output["avg_logprob"] < settings.log_prob_threshold
        )
        if silence:
            window.final = []
            return
        failed = (
            output["compression_ratio"] > settings.compression_ratio_threshold
            or output["avg_logprob"] < settings.log_prob_threshold
        )
        window.candidates.append((output, segments))
        can_retry = window.job.options.temperature == 0 and window.temperature_index + 1 < len(
            FALLBACK_TEMPERATURES
        )
        if failed and can_retry:
            window.temperature_index += 1
            window.job.pending.appendleft(window)  # next batch, at the next temperature
            return
        if failed:  # every temperature failed: keep the best, as Whisper does
            passable = [
                c for c in window.candidates
                if c[0]["compression_ratio"] <= settings.compression_ratio_threshold
            ] or window.candidates  # fmt: skip
            output, segments = max(passable, key=lambda c: c[0]["avg_logprob"])
        window.final = segments
        window.candidates = []
        if window.parent is None:
            self._cover(window, segments)

    def _cover(self, window: Window, segments: list[DecodedSegment]) -> None:
        """Decode again the speech this window's result left out."""
        pieces = uncovered(window, segments)
        if sum(e - s for s, e in pieces) < MIN_UNCOVERED_TOTAL_S:
            return
        padded = [(max(window.start, s - PAD_S), min(window.end, e + PAD_S)) for s, e in pieces]
        for start, end, speech in pack_spans(padded, WINDOW_S, window.end):
            child = Window(window.job, start, end, speech, parent=window)
            window.children.append(child)
            window.job.pending.appendleft(child)
        log.debug("%d uncovered speech pieces queued for a second pass", len(pieces))

    def _emit(self, job: Job) -> None:
        ready = []
        while job.emitted < len(job.windows) and job.windows[job.emitted].complete:
            ready += job.windows[job.emitted].segments()
            job.emitted += 1
        if ready:
            job.results += ready
            if job.on_segments is not None:
                try:
                    job.on_segments(ready)
                except Exception:  # the listener is gone (e.g. its event loop closed)
                    log.debug("a job's segment listener failed", exc_info=True)
        if job.emitted == len(job.windows):
            self._finish(job)

    def _finish(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        job.release_audio()
        if not job.future.done():
            job.future.set_result(
                JobResult(job.results, job.language or "en", job.language_probability)
            )


def new_job(
    samples: np.ndarray,
    options: JobOptions,
    settings: DecodeSettings,
    on_segments: Callable[[list[DecodedSegment]], None] | None = None,
) -> Job:
    """A job with its windows cut (VAD runs here: call it off the event loop)."""
    job = Job(samples=samples, options=options, windows=[], on_segments=on_segments)
    job.windows = [job.window_at(s, e, sp) for s, e, sp in speech_windows(samples, settings)]
    return job


__all__ = [
    "DecodeSettings",
    "DecodedSegment",
    "Job",
    "JobOptions",
    "JobResult",
    "Scheduler",
    "new_job",
]
