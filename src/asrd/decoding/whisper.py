"""The adapter to the model: the only module here that touches faster-whisper's model
internals and CTranslate2. Features, encoding, language detection and decoding, with typed
results."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from ..audio import SAMPLE_RATE, to_float32
from .packing import PACK_GAP_S, Pack, layout
from .results import Decoded, DecodedSegment, WindowOutput, compression_ratio
from .settings import N_FRAMES, WINDOW_S, DecodeSettings
from .timing import StageClock

log = logging.getLogger(__name__)

# Whisper's own punctuation, attached to the neighbouring word in word timings.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001

MakeRoom = Callable[[list[Pack], list[Pack]], list[Pack]]


class Whisper:
    """A loaded faster-whisper model, as the scheduler uses it."""

    def __init__(self, model: WhisperModel, clock: StageClock | None = None):
        self.model = model
        self.clock = clock if clock is not None else StageClock()

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def encodes_one_at_a_time(self, settings: DecodeSettings) -> bool:
        """On a CPU the encoder gets slower per window in bigger batches; the decoder doesn't."""
        return settings.encode_batch_size <= 1 and self.model.model.device == "cpu"

    def tokenizer(self, task: str, language: str) -> Tokenizer:
        return Tokenizer(self.model.hf_tokenizer, self.multilingual, task=task, language=language)

    # --- features and encoder ---------------------------------------------------------------

    def features(self, samples: np.ndarray, start: float, end: float) -> np.ndarray:
        part = samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        return self._mel(to_float32(part))

    def _mel(self, chunk: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
        """The chunk's log-mel (`frames` of it), padded with zeros in log-mel space, as
        faster-whisper's sequential `transcribe` pads it. (Zero samples before the log-mel, as
        openai-whisper pads, sit at the log floor instead: base's short-clip WER 3.5% -> 4.3%,
        bench/README.)"""
        hop = self.model.feature_extractor.hop_length
        features = self.model.feature_extractor(chunk[: frames * hop], padding=hop)[:, :-1]
        features = features[:, :frames]
        return np.pad(features, ((0, 0), (0, frames - features.shape[-1])))

    def pack_features(self, pack: Pack) -> np.ndarray:
        """A model input's features: a window's, or a pack's parts 2 s of silence apart."""
        if len(pack) == 1:
            return self.features(pack[0].job.samples, pack[0].start, pack[0].end)
        gap = np.zeros(int(PACK_GAP_S * SAMPLE_RATE), np.float32)
        pieces = []
        for window in pack:
            samples = window.job.samples
            part = samples[int(window.start * SAMPLE_RATE) : int(window.end * SAMPLE_RATE)]
            pieces += [to_float32(part), gap]
        return self._mel(np.concatenate(pieces[:-1]))

    def encode(self, packs: list[Pack], step: int) -> ctranslate2.StorageView:
        """All inputs, `step` at a time on a CPU (all at once on a GPU)."""
        with self.clock.stage("features"):
            features = np.stack([self.pack_features(pack) for pack in packs])
        with self.clock.stage("encode"):
            if step >= len(features) or self.model.model.device != "cpu":
                return self.model.encode(features)
            parts = [
                np.array(self.model.encode(features[i : i + step]))
                for i in range(0, len(features), step)
            ]
            return ctranslate2.StorageView.from_array(np.concatenate(parts))

    def encode_each(
        self, packs: list[Pack], make_room: MakeRoom
    ) -> tuple[list[Pack], ctranslate2.StorageView]:
        """The inputs one at a time. Before each pass after the first, `make_room(waiting,
        done)` returns the inputs to encode next (the scheduler may swap in newcomers'):
        the inputs encoded, in order, and their encoder output."""
        done: list[Pack] = []
        parts = []
        waiting = list(packs)
        while waiting:
            if done:
                waiting = make_room(waiting, done)
            pack = waiting.pop(0)
            with self.clock.stage("features"):
                features = self.pack_features(pack)[None]
            with self.clock.stage("encode"):
                parts.append(np.array(self.model.encode(features)))
            done.append(pack)
        return done, ctranslate2.StorageView.from_array(np.concatenate(parts))

    # --- language -----------------------------------------------------------------------------

    def detect_language(
        self, samples: np.ndarray, start: float, end: float, seconds: float = WINDOW_S
    ) -> tuple[str, float]:
        """The most likely language of the audio from `start` to `end` and its probability,
        from an encoder pass of its own over its first `seconds`. The encoder takes inputs
        shorter than 30 s, and their cost falls faster than their length: 10 s cost ~8x less
        than 30 s, and are as reliable where the answer is sure (decoding from them is not)."""
        with self.clock.stage("detect"):
            part = samples[int(start * SAMPLE_RATE) : int(min(end, start + seconds) * SAMPLE_RATE)]
            frames = min(N_FRAMES, round(seconds * self.model.frames_per_second))
            features = self._mel(to_float32(part), frames)
            encoded = self.model.encode(np.ascontiguousarray(features[None]))
            return self._languages(encoded)[0]

    def languages(self, encoder_output: ctranslate2.StorageView) -> list[tuple[str, float]]:
        """Each input's most likely language and its probability, from its encoder output
        (no extra encoder pass, unlike faster-whisper's separate detection)."""
        with self.clock.stage("detect"):
            return self._languages(encoder_output)

    def _languages(self, encoder_output: ctranslate2.StorageView) -> list[tuple[str, float]]:
        found = self.model.model.detect_language(encoder_output)
        return [(token[2:-2], float(p)) for token, p in (f[0] for f in found)]  # "<|fr|>"

    # --- decoder ------------------------------------------------------------------------------

    def generate(
        self,
        packs: list[Pack],
        encoder_output: ctranslate2.StorageView,
        temperature: float,
        settings: DecodeSettings,
    ) -> list[Decoded]:
        """Decode the encoded inputs, with timestamps (and word timings if their jobs ask):
        each input's output and its segments, in the input's own time range."""
        model = self.model
        tokenizers: list[Tokenizer] = [pack[0].job.tokenizer for pack in packs]  # type: ignore[misc]
        prompts = []
        for pack, tokenizer in zip(packs, tokenizers, strict=True):
            prompt = pack[0].job.options.prompt
            previous = tokenizer.encode(" " + prompt.strip()) if prompt else []
            prompts.append(model.get_prompt(tokenizer, previous, without_timestamps=False))
        if temperature > 0:
            sampling = dict(beam_size=1, num_hypotheses=settings.best_of,
                            sampling_topk=0, sampling_temperature=temperature)  # fmt: skip
        else:
            sampling = dict(beam_size=settings.beam_size)
        started = time.perf_counter()
        with self.clock.stage("decode"):
            results = model.model.generate(
                encoder_output,
                prompts,
                length_penalty=1,
                max_length=model.max_length,
                suppress_blank=True,
                suppress_tokens=get_suppressed_tokens(tokenizers[0], [-1]),
                return_scores=True,
                return_no_speech_prob=True,
                max_initial_timestamp_index=int(1.0 / model.time_precision),
                **sampling,
            )
        log.debug("decoder: %d inputs in %.2f s", len(packs), time.perf_counter() - started)
        outputs = [
            self._output(result, tokenizer)
            for result, tokenizer in zip(results, tokenizers, strict=True)
        ]
        spans = [layout(pack)[:2] for pack in packs]
        subsegments = [
            self._split(output.tokens, tokenizer, start, end)
            for output, tokenizer, (start, end) in zip(outputs, tokenizers, spans, strict=True)
        ]
        if packs[0][0].job.options.word_timestamps:  # never packed, language known
            with self.clock.stage("align"):
                self._align(subsegments, tokenizers[0], encoder_output, packs)
        return [
            Decoded(output, self._segments(subs, output, tokenizer, start, end, temperature))
            for output, subs, tokenizer, (start, end) in zip(
                outputs, subsegments, tokenizers, spans, strict=True
            )
        ]

    def _align(
        self,
        subsegments: list[list[dict]],
        tokenizer: Tokenizer,
        encoder_output: ctranslate2.StorageView,
        packs: list[Pack],
    ) -> None:
        """Word timings, added to `subsegments` in place (faster-whisper's alignment)."""
        fps = self.model.frames_per_second
        self.model.add_word_timestamps(
            subsegments,
            tokenizer,
            encoder_output,
            [int(np.ceil(p[0].end - p[0].start) * fps) for p in packs],
            PREPEND_PUNCTUATIONS,
            APPEND_PUNCTUATIONS,
            0.0,
        )

    @staticmethod
    def _output(
        result: ctranslate2.models.WhisperGenerationResult, tokenizer: Tokenizer
    ) -> WindowOutput:
        tokens = result.sequences_ids[0]
        text_tokens = [t for t in tokens if t < tokenizer.eot]
        return WindowOutput(
            tokens=tokens,
            avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
            no_speech_prob=result.no_speech_prob,
            compression_ratio=compression_ratio(tokenizer.decode(text_tokens).strip()),
        )

    def _split(
        self, tokens: list[int], tokenizer: Tokenizer, start: float, end: float
    ) -> list[dict]:
        """faster-whisper's segments (dicts) of one input, by its timestamp tokens."""
        fps = self.model.frames_per_second
        seek = round(start * fps)
        subsegments, _, _ = self.model._split_segments_by_timestamps(
            tokenizer=tokenizer,
            tokens=tokens,
            time_offset=seek / fps,
            segment_size=int(np.ceil(end - start) * fps),
            segment_duration=end - start,
            seek=seek,
        )
        return subsegments

    @staticmethod
    def _segments(
        subsegments: list[dict],
        output: WindowOutput,
        tokenizer: Tokenizer,
        start: float,
        end: float,
        temperature: float,
    ) -> list[DecodedSegment]:
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
                    avg_logprob=float(output.avg_logprob),
                    compression_ratio=compression_ratio(text),
                    no_speech_prob=float(output.no_speech_prob),
                    words=sub.get("words"),
                )
            )
        return segments
