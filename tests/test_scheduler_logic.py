"""The scheduler's pure logic (packing speech into windows, finding uncovered speech), and
what it holds on to once idle."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

from asrd.audio import decode_audio
from asrd.audio_lanes import AudioLanes
from asrd.config import load_settings
from asrd.decoding import DecodedSegment, DecodeSettings, Job
from asrd.decoding.checks import Final, Solo, check_pack
from asrd.decoding.queues import apply
from asrd.decoding.results import Decoded, WindowOutput
from asrd.decoding.windows import Window, pack_spans, uncovered
from asrd.registry import ModelRegistry
from asrd.transcript import TranscribeOptions

from conftest import CLIPS


def test_spans_are_packed_up_to_the_limit_and_split_at_long_pauses() -> None:
    spans = [(0.0, 10.0), (10.5, 20.0), (20.5, 29.0), (29.5, 35.0), (40.0, 45.0)]
    windows = pack_spans(spans, 30.0, 60.0)
    assert [(s, e) for s, e, _ in windows] == [(0.0, 29.0), (29.5, 35.0), (40.0, 45.0)]
    assert windows[0][2] == spans[:3]


def test_overlong_speech_is_cut_at_the_limit() -> None:
    windows = pack_spans([(0.0, 70.0)], 30.0, 70.0)
    assert [(s, e) for s, e, _ in windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 70.0)]


def segment(start: float, end: float) -> DecodedSegment:
    return DecodedSegment(start, end, " text", 0, [], 0.0, -0.2, 1.2, 0.01)


def test_uncovered_speech_is_found() -> None:
    job = Job(samples=None, options=TranscribeOptions(), windows=[])  # type: ignore[arg-type]
    window = Window(job, 0.0, 30.0, speech=[(0.0, 12.0), (13.0, 29.0)])
    # The decoder stopped at 20 s (an early end): 20.3 .. 29 s is speech nobody decoded.
    assert uncovered(window, [segment(0.0, 11.8), segment(13.1, 20.0)]) == [(20.3, 29.0)]
    # Small gaps inside the slack don't count.
    assert uncovered(window, [segment(0.2, 11.9), segment(13.0, 28.8)]) == []


def test_a_pack_part_left_without_text_is_decoded_again_alone() -> None:
    """Two short requests packed in one window (parts at 0 s and 5 s of the pack). The text
    covers the second part but only the first second of the first: that part goes back to
    its job's queue to be decoded alone, with no second pass stacked on the pack's text."""
    first, second = (Job(samples=None, options=TranscribeOptions(), windows=[]) for _ in range(2))  # type: ignore[arg-type]
    short = Window(first, 0.0, 3.0, speech=[(0.0, 3.0)])
    other = Window(second, 0.0, 5.0, speech=[(0.0, 5.0)])
    output = WindowOutput(tokens=[], avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.2)
    decoded = Decoded(output, [segment(0.0, 1.0), segment(5.0, 10.0)])
    verdicts = check_pack([short, other], decoded, DecodeSettings())
    assert isinstance(verdicts[0], Solo) and isinstance(verdicts[1], Final)
    for window, verdict in zip([short, other], verdicts, strict=True):
        apply(window, verdict)
    assert short.solo and list(first.pending) == [short] and not short.children
    assert short.final is None
    assert other.final is not None and [(s.start, s.end) for s in other.final] == [(0.0, 5.0)]


def test_an_idle_model_holds_no_request_audio(tmp_path: Path) -> None:
    """After a transcription nothing keeps its audio alive: not the scheduler's last batch,
    not its loop variables."""
    settings = load_settings(model_id="tiny.en", cache_dir=tmp_path, cpu_threads=2)
    models = ModelRegistry(settings, AudioLanes(settings))
    engine = models.default
    try:
        engine.load_sync()
        samples = decode_audio(CLIPS["en_jfk_inaugural_1961.flac"].read(), as_int16=True)
        alive = weakref.ref(samples)
        assert "country" in engine.transcribe_sync(samples, TranscribeOptions()).text
        del samples
        deadline = time.monotonic() + 5
        while alive() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert alive() is None
    finally:
        models.close()
