"""Configuration: every setting is an environment variable, declared and documented once here.

The table of variables in docs/configuration.md is generated from this class (``asrd
env-table``), so the ``description`` of each field is the user-facing documentation.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MODEL_SIZES = ("tiny", "base", "small", "medium", "turbo", "large")
COMPUTE_TYPES = (
    "auto",
    "default",
    "int8",
    "int8_float16",
    "int8_float32",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


DEFAULT_MODEL_ALIASES = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe-diarize",
    "gpt-transcribe",
    "whisper-large-v3",
    "whisper-large-v3-turbo",
)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "asrd"


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """asrd's settings, read from environment variables (names are case-insensitive)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # --- HTTP server -------------------------------------------------------------------------
    host: str = Field(
        "*",
        description="Interface to listen on. `*` means every interface, IPv4 and IPv6.",
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    listen: str | None = Field(
        None,
        description=(
            "The second seed's name for HOST: when set, it wins (the start-up log names the "
            "interfaces bound)."
        ),
    )

    # --- Model -------------------------------------------------------------------------------
    model_id: str = Field(
        "large-v3-turbo",
        description=(
            "Whisper model: a local directory with a CTranslate2 Whisper model, a faster-whisper "
            "name (`tiny.en`, `base`, `large-v3`, `turbo`, `distil-large-v3`, ...), a Hugging "
            "Face id of an OpenAI/distil-whisper model (`openai/whisper-large-v3`, "
            "`distil-whisper/distil-large-v2`, ...; mapped to its CTranslate2 conversion) or of "
            "a CTranslate2 conversion itself. Downloaded once into `CACHE_DIR`. `tiny.en` and "
            "`base` are used offline from the `asrd[offline]` packages when installed. The "
            "default, large-v3-turbo, is large-v3's accuracy at several times its speed."
        ),
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "More models to serve beside MODEL_ID, comma-separated, in any spelling MODEL_ID "
            "takes (`base,small.en,/models/my-finetune`). A request picks one with its `model` "
            "(OpenAI `model`, `/asr?model=`, the task form's `model`, `asrd transcribe "
            "--model`); none means MODEL_ID. Each is loaded on first use and unloaded after "
            "MODEL_TTL_S idle."
        ),
    )
    model_ttl_s: float | None = Field(
        300,
        ge=0,
        description=(
            "Unload a model of MODELS after this many idle seconds (0: as soon as its work is "
            "done; unset: never). MODEL_ID keeps UNLOAD_MODEL_AFTER_S. Per model: MODEL_TTLS."
        ),
    )
    model_ttls: Annotated[dict[str, float | None], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Idle seconds before unloading, per model, comma-separated `model=seconds` (`-1`: "
            "never), e.g. `base=60,small=-1`; wins over MODEL_TTL_S and UNLOAD_MODEL_AFTER_S."
        ),
    )
    preload_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Models of MODELS to load at start-up (MODEL_ID follows LOAD_MODEL_ON_STARTUP); "
            "they then unload on their TTL like the others."
        ),
    )
    max_loaded_models: int | None = Field(
        None,
        ge=1,
        description=(
            "Most models in memory at once. Loading one more unloads the least recently used "
            "idle model first; when every loaded model is busy the request gets 503 with "
            "Retry-After. Unset: no limit (the served set is the bound)."
        ),
    )
    max_loaded_models_mb: float | None = Field(
        None,
        gt=0,
        description=(
            "Memory for loaded models, counted by the size of their weights on disk (an int8 "
            "model takes about that, a float16 one on a GPU about that in GPU memory); "
            "evicts like MAX_LOADED_MODELS. Unset: no limit."
        ),
    )
    model_load_timeout_s: float = Field(
        600,
        gt=0,
        description=(
            "Longest a request waits for its model to load (503 with Retry-After after it; the "
            "load goes on)."
        ),
    )
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict.fromkeys(DEFAULT_MODEL_ALIASES, ""),
        description=(
            "Model names clients send that mean a served model, comma-separated `alias=model` "
            "(a bare `alias` means MODEL_ID), matched case-insensitively. Default: OpenAI's and "
            "Groq's names (" + ", ".join(f"`{name}`" for name in DEFAULT_MODEL_ALIASES) + ") "
            "mean MODEL_ID. Setting it replaces the defaults."
        ),
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description=(
            "Where downloaded and assembled models are kept (default `~/.cache/asrd`; the seed "
            "used `/data`, which needs root: set it to `/data` in a container with a volume)."
        ),
    )
    baked_models_dir: Path | None = Field(
        None,
        description=(
            "A read-only directory of models, one folder per model named as faster-whisper "
            "names it (`tiny.en`, `large-v3-turbo`; another repo as `owner--name`), as `asrd "
            "download --into DIR` lays it out: searched before CACHE_DIR, never written. The "
            "container images set it to `/opt/asrd/models`, where their baked model lives, so "
            "a volume on CACHE_DIR can't hide it; also for a models volume shared read-only."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Inference device: `auto` uses a CUDA GPU when one is usable."
    )
    compute_type: str = Field(
        "auto",
        description=(
            "CTranslate2 compute type: `auto` is float16 on a GPU and int8 on a CPU; also "
            "`int8`, `int8_float16`, `int16`, `float16`, `bfloat16`, `float32`, ..."
        ),
    )
    cpu_threads: int = Field(
        default_factory=_available_cores,
        ge=1,
        le=1024,
        description="Threads for inference on the CPU (default: all cores this process may use)",
    )
    flash_attention_2: bool = Field(
        False,
        description=(
            "Use CTranslate2's flash attention on GPUs that support it (compute capability >= "
            "8.0); elsewhere it is a logged no-op."
        ),
    )

    # --- Long-audio inference ----------------------------------------------------------------
    batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Most windows decoded together in one batch, across requests. Default: 16 on a "
            "GPU; 6 on a CPU, where more gains little speed and costs memory (the decoder "
            "holds ~40 MB per window with `base`, ~500 MB with `large`)."
        ),
    )
    chunk_length_s: int = Field(
        30,
        ge=1,
        le=30,
        description=(
            "Longest window (seconds) that long audio is cut into, at pauses in the speech. "
            "Whisper sees at most 30 s at a time."
        ),
    )
    stride_length_s: float | None = Field(
        None,
        ge=0,
        description=(
            "Accepted for compatibility with the seed, no effect: the seed cut audio at fixed "
            "positions and needed overlapping strides to re-join words cut in two; asrd cuts "
            "windows at pauses found by voice activity detection, so no word is cut and no "
            "overlap is needed."
        ),
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "Accepted for compatibility with the seed, no effect: a cap on the tokens decoded "
            "per window would silently cut off dense speech (the seed's 128 did), so asrd always "
            "lets the decoder run to the model's own limit (448 tokens per 30 s window)."
        ),
    )
    batch_wait_ms: float = Field(
        20,
        ge=0,
        le=1000,
        description=(
            "How long the scheduler waits for windows of other requests to arrive before "
            "starting a batch that isn't full (batching across requests)."
        ),
    )
    pack_short_audio: bool = Field(
        True,
        description=(
            "Decode short audio of different requests together in one 30 s window (Whisper's "
            "encoder costs the same for 3 s as for 30 s), each keeping its own time range; a "
            "request the shared window doesn't serve cleanly is decoded again on its own."
        ),
    )
    encode_batch_size: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Windows encoded per encoder call; 0: 1 on a CPU (where the encoder gets slower "
            "per window in bigger batches), BATCH_SIZE on a GPU."
        ),
    )
    beam_size: int | None = Field(
        None,
        ge=1,
        le=16,
        description=(
            "Beam width of the decoder. Default: 5 on a GPU; 1 (greedy, as openai-whisper's "
            "own default) on a CPU, where it is ~1.2x faster and, with asrd's window checks, "
            "measured as accurate (see bench/README.md)."
        ),
    )
    vad_filter: bool = Field(
        True,
        description=(
            "Skip non-speech with Silero VAD before decoding (prevents text invented in silence "
            "or noise)."
        ),
    )

    compression_ratio_threshold: float = Field(
        2.4,
        gt=0,
        description=(
            "A window whose text compresses better than this (gzip ratio) is repetitive, a "
            "typical decoding failure, and is decoded again at higher temperatures."
        ),
    )
    log_prob_threshold: float = Field(
        -1.0,
        le=0,
        description=(
            "A window whose mean token log-probability is below this is decoded again at "
            "higher temperatures (or dropped as silence, see NO_SPEECH_THRESHOLD)."
        ),
    )
    no_speech_threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        description=(
            "A window whose no-speech probability is above this and whose log-probability is "
            "below LOG_PROB_THRESHOLD is silence: its text is dropped, never invented."
        ),
    )
    stream_batch_size: int = Field(
        2,
        ge=1,
        le=256,
        description=(
            "Batch size for streamed requests (`stream=true`): smaller than BATCH_SIZE so the "
            "first text arrives sooner."
        ),
    )
    segment_max_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Default cap on a segment's length in seconds (subtitles that read well): longer "
            "segments are split at word boundaries using word timings. Unset: Whisper's "
            "segments as they are. A request's `max_segment_s` overrides it."
        ),
    )
    segment_max_chars: int | None = Field(
        None,
        ge=10,
        description=(
            "Default cap on a segment's length in characters (e.g. 84 for two 42-character "
            "subtitle lines), split like SEGMENT_MAX_S. A request's `max_segment_chars` "
            "overrides it."
        ),
    )

    # --- Inputs and limits -------------------------------------------------------------------
    max_upload_mb: float = Field(
        250, gt=0, description="Largest accepted audio, in MB: request bodies and URL downloads."
    )
    max_audio_s: float = Field(
        3 * 3600, gt=0, description="Longest accepted audio, in seconds of decoded sound."
    )
    max_decoded_audio_mb: float = Field(
        768,
        gt=0,
        description=(
            "Server-wide budget for decoded audio held in memory (16 kHz 16-bit mono: 1 h is "
            "110 MB), over every request and task being decoded or transcribed. A request that "
            "would cross it waits up to 5 s for room, then gets 503 with Retry-After; it never "
            "costs the server an out-of-memory. Keep it at least MAX_AUDIO_S worth (3 h: 330 MB)."
        ),
    )
    max_uploads_in_memory_mb: float | None = Field(
        None,
        gt=0,
        description=(
            "Request bodies held in memory at once, over every request in progress (uploads "
            "are never spooled to disk): an upload that would cross it gets 503 with "
            "Retry-After at once, from its Content-Length or at the chunk that crosses it. "
            "Default: 1024, or MAX_UPLOAD_MB if that is larger; at least MAX_UPLOAD_MB."
        ),
    )
    max_decode_cpu_s: float = Field(
        120,
        gt=0,
        description=(
            "CPU seconds one input may spend being decoded (a small file of hours of "
            "many-channel, high-rate audio costs minutes); beyond it, 413 `decode_too_slow`."
        ),
    )
    local_file_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated directories whose files `POST /asr` may read when given "
            '`{"url": "/absolute/path"}`. Empty (the default) forbids reading server files.'
        ),
    )
    url_connect_timeout_s: float = Field(
        10, gt=0, description="Connect timeout when downloading an audio URL."
    )
    url_read_timeout_s: float = Field(
        30, gt=0, description="Longest wait for the next bytes when downloading an audio URL."
    )
    url_total_timeout_s: float = Field(
        300, gt=0, description="Longest time a whole audio URL download may take."
    )

    allow_private_urls: bool = Field(
        False,
        description=(
            "Allow audio URLs and task callbacks that point at loopback, private, link-local "
            "or other non-public addresses (off: such URLs are refused with 403)."
        ),
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated API keys. When set, every API route (`/asr`, `/v1/...`, "
            "`/api/...`) needs one, as `Authorization: Bearer KEY` or `X-API-Key: KEY` (401 "
            "otherwise); the web page asks for it. Empty: no authentication."
        ),
    )
    protect_health: bool = Field(False, description="With API_KEYS, `/hc` needs a key too.")
    protect_metrics: bool = Field(False, description="With API_KEYS, `/metrics` needs a key too.")
    max_concurrent_requests: int | None = Field(
        64,
        ge=1,
        description=(
            "Requests in progress at once (all routes but /hc and /metrics); beyond it, 503 "
            "with Retry-After at once. Unset: no limit."
        ),
    )
    max_connections: int = Field(
        1000,
        ge=8,
        description=(
            "Open client connections at most (kept below the process's file-descriptor "
            "limit). At the cap, a new connection closes the longest-idle one that has no "
            "request in progress (so `/hc` always gets through), or is refused with 503 if "
            "every connection is busy."
        ),
    )
    keep_alive_s: float = Field(
        5, gt=0, description="Idle keep-alive connections are closed after this many seconds."
    )
    header_timeout_s: float = Field(
        10,
        gt=0,
        description=(
            "A connection must send a request's complete headers within this many seconds of "
            "connecting (or of its previous response), else it is closed (slow-header attacks)."
        ),
    )
    min_upload_kb_s: float = Field(
        8,
        ge=0,
        description=(
            "Slowest accepted upload, in KB/s averaged over the body so far (after its first "
            "10 s): a slower client gets 408 and its connection is closed, so slow bodies "
            "can't hold the request slots. A body that sends nothing for 30 s gets 408 too. "
            "0: no minimum rate (the 30 s idle limit stays)."
        ),
    )
    request_timeout_s: float = Field(
        3600,
        ge=0,
        description=(
            "Longest time one HTTP request may take, upload and transcription included: "
            "beyond it the work is cancelled and the client gets 504 (a stream that has begun "
            "ends with an error event). Long files belong in the task API, which this does "
            "not limit. 0: no limit."
        ),
    )
    shutdown_grace_s: float = Field(
        30,
        ge=0,
        description=(
            "On SIGTERM/SIGINT: stop accepting, then give requests in progress and the running "
            "task this long to finish before exiting (0 after a clean finish)."
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated origins allowed to call asrd from a browser (CORS); empty: CORS "
            "off. `*` allows any origin, and then never with credentials."
        ),
    )

    salad_machine_id: str | None = Field(
        None, description="Set by SaladCloud; sent back in the `X-Salad-Machine-ID` header."
    )
    salad_container_group_id: str | None = Field(
        None,
        description="Set by SaladCloud; sent back in the `X-Salad-Container-Group-ID` header.",
    )

    # --- Model lifecycle (the second seed's variables) ----------------------------------------
    load_model_on_startup: bool = Field(
        True,
        description=(
            "Load the model at start-up (`/hc` is 503 until it is ready); off: load it on the "
            "first request."
        ),
    )
    unload_model_after_s: float | None = Field(
        None,
        ge=0,
        description=(
            "Unload the model after this many idle seconds, freeing its memory; the next "
            "request loads it again. 0: unload as soon as the work is done. Unset: never."
        ),
    )
    use_gpu_if_available: bool = Field(
        True, description="Off: stay on the CPU even if a GPU is usable (with `DEVICE=auto`)."
    )
    max_model: str | None = Field(
        None,
        description=(
            "Largest model size to load (`tiny`, `base`, `small`, `medium`, `turbo`, `large`; "
            "`turbo` ranks between medium and large): a larger MODEL_ID is replaced by this one."
        ),
    )
    cpu_fallback_model: str | None = Field(
        None,
        description=(
            "Model to use when running on the CPU (no GPU, `USE_GPU_IF_AVAILABLE=0`, or the GPU "
            "failed to load the model); unset: MODEL_ID."
        ),
    )
    develop_mode: bool = Field(
        False,
        description="Use the smallest model (`tiny.en`, offline from `asrd[offline]`), whatever "
        "MODEL_ID says.",
    )

    # --- Task queue (`/api/v1/...`) ------------------------------------------------------------
    max_task_queue_size: int = Field(
        128,
        ge=1,
        description="Tasks that may wait in the queue; beyond it, submissions get 429 at once.",
    )
    max_queue_mb: float = Field(
        1024,
        gt=0,
        description=(
            "Total size of the uploads waiting in the queue (kept in memory, never on disk); "
            "beyond it, submissions get 429 at once."
        ),
    )
    max_stored_results: int = Field(
        1000,
        ge=1,
        description=(
            "Finished and failed task results kept at most; beyond it the oldest finished "
            "result is deleted before its DELETE_RESULTS_AFTER_M (pending and running tasks "
            "are never dropped)."
        ),
    )
    delete_results_after_m: float = Field(
        60, gt=0, description="Minutes a finished or failed task's result is kept."
    )
    refresh_expiration_time_on_usage: bool = Field(
        True, description="Reading a result restarts its DELETE_RESULTS_AFTER_M countdown."
    )
    run_result_expiry_check_m: float = Field(
        5,
        ge=0,
        description=(
            "Minutes between sweeps that delete expired results. 0: no sweeper, results "
            "expire when they are next looked up (never readable after their time either way)."
        ),
    )

    # --- Scale-out: a Redis queue shared by API replicas and workers (docs/scale-out.md) ------
    queue_backend: Literal["memory", "redis"] = Field(
        "memory",
        description=(
            "Where tasks wait and results are kept: `memory` (this process; one server) or "
            "`redis` (REDIS_URL; any number of API replicas and workers share it, and a task "
            "outlives the process that took it). `redis` needs `asrd[redis]`."
        ),
    )
    redis_url: str | None = Field(
        None,
        description=(
            "The Redis of QUEUE_BACKEND=redis: `redis://[:password@]host:port/db`, or "
            "`rediss://...` for TLS (`?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem` to "
            "check the server). Never logged. Needs persistence on (appendonly) for accepted "
            "tasks to survive a Redis restart."
        ),
    )
    redis_prefix: str = Field(
        "asrd",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description=(
            "Prefix of every Redis key asrd writes, so several deployments can share one Redis "
            "(letters, digits, `_`, `.`, `-`)."
        ),
    )
    role: Literal["all", "api", "worker"] = Field(
        "all",
        description=(
            "`all`: the HTTP API and a task worker (as one server). `api` (`asrd serve "
            "--no-worker`): the API only, no model loaded for tasks (needs "
            "QUEUE_BACKEND=redis). `worker` (`asrd worker`): takes tasks from Redis, serves "
            "only `/hc` and `/metrics` on HOST/PORT."
        ),
    )
    task_lease_s: float = Field(
        30,
        ge=1,
        le=3600,
        description=(
            "QUEUE_BACKEND=redis: a worker renews the lease on its task every second; a "
            "worker that stops renewing it (killed, frozen, cut off) loses the task this "
            "many seconds later to another worker, which runs it again (one result, one "
            "callback)."
        ),
    )
    sync_via_workers: bool = Field(
        False,
        description=(
            "QUEUE_BACKEND=redis: `/asr` and `/v1/audio/*` (streaming too) are run by the "
            "workers through Redis instead of on this server's model, so thin API replicas "
            "can front a pool of GPU workers. A client that hangs up stops the work; a worker "
            "that dies mid-request gives its client a 503 within TASK_LEASE_S."
        ),
    )
    sync_worker_wait_s: float = Field(
        10,
        gt=0,
        le=600,
        description=(
            "SYNC_VIA_WORKERS: how long a request waits for a worker to take it (all busy, "
            "or none running) before it gets 503."
        ),
    )

    # --- Live transcription (`/v1/realtime`) ----------------------------------------------------
    max_realtime_sessions: int | None = Field(
        16,
        ge=0,
        description=(
            "Live transcription sessions (Realtime API WebSockets) open at once; beyond it the "
            "handshake is refused with 503 and Retry-After. 0: no live sessions. Unset: no "
            "limit. Sessions don't count against MAX_CONCURRENT_REQUESTS."
        ),
    )
    realtime_max_session_s: float = Field(
        3600,
        gt=0,
        description=(
            "Longest a live session may last, and most audio it may send (seconds); then it "
            "gets an `error` event `session_expired` and is closed (1008)."
        ),
    )
    realtime_idle_timeout_s: float = Field(
        60,
        gt=0,
        description=(
            "A live session whose client sends nothing for this long is closed (1000, reason "
            "`idle timeout`)."
        ),
    )
    realtime_max_buffer_mb: float = Field(
        15,
        gt=0,
        description=(
            "Most uncommitted audio a live session holds (at 16 kHz, 16-bit: 15 MB is about "
            "8 minutes); with server VAD a turn is cut at 30 s anyway. An append past it gets "
            "an `error` event `input_audio_buffer_full`."
        ),
    )
    realtime_max_message_mb: float = Field(
        8,
        gt=0,
        description="Largest WebSocket message a live session takes; a bigger one closes it "
        "(1009).",
    )
    realtime_partial_interval_ms: int = Field(
        500,
        ge=100,
        description=(
            "A live utterance is decoded again for its partial text (deltas) each time it has "
            "grown by this much audio, at low priority, skipped while the previous re-decode "
            "is still on its way; every session's re-decodes start on one shared clock of this "
            "period, so they are batched together."
        ),
    )

    # --- Logging and admin ---------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Log level."
    )
    log_level_console: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = Field(
        None, description="Log level of the console (the second seed's name); unset: LOG_LEVEL."
    )
    log_level_file: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = Field(
        None, description="Log level of the files in LOG_DIR; unset: LOG_LEVEL."
    )
    log_privacy_mode: bool = Field(
        True,
        description="Shorten task ids in logs (`3f2a…9c1d`). Transcripts are never logged.",
    )
    log_dir: Path | None = Field(
        None, description="Directory for log files (created if missing); unset: console only."
    )
    log_file: str = Field("asrd.log", description="Log file name inside LOG_DIR.")
    log_format: str = Field(
        "{asctime} {levelname} {name}: {message}",
        description="Log line format, `{`-style (Python logging attribute names).",
    )
    log_date_format: str = Field(
        "%Y-%m-%d %H:%M:%S", description="`strftime` format of `{asctime}`."
    )
    log_rotation_when: Literal[
        "S", "M", "H", "D", "MIDNIGHT", "W0", "W1", "W2", "W3", "W4", "W5", "W6"
    ] = Field(
        "H", description="Timed rotation unit of the log file (Python's TimedRotatingFileHandler)."
    )
    log_rotation: (
        Literal["S", "M", "H", "D", "MIDNIGHT", "W0", "W1", "W2", "W3", "W4", "W5", "W6"] | None
    ) = Field(
        None,
        description="The name the second seed's code reads for LOG_ROTATION_WHEN; when set, it "
        "wins.",
    )
    log_rotation_interval: int = Field(2, ge=1, description="Rotate every this many units.")
    log_rotation_backup_count: int = Field(48, ge=0, description="Rotated log files to keep.")
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys that may download the logs (`GET /api/v1/logs`), "
        "sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
    )
    authorized_mails: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="E-mail addresses (comma- or space-separated) that may download the logs, "
        "as sent in `X-Email` by an authenticating proxy listed in TRUSTED_PROXIES.",
    )
    log_authorized_mails: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="The second seed's name for AUTHORIZED_MAILS (its NixOS module sets it); "
        "the addresses of both are allowed.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated IPs or CIDR ranges of reverse proxies whose user headers "
        "are believed: `X-Email` for the `/api/v1/logs` admin check; `X-Email`, `X-User` and "
        "oauth2-proxy's `X-Forwarded-User`/`-Email`/`-Preferred-Username` for "
        "`/api/v1/userinfo`. The check is on the TCP peer address, so no header can fake it.",
    )

    @field_validator("log_level", "log_level_console", "log_level_file", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("compute_type", mode="before")
    @classmethod
    def _check_compute_type(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in COMPUTE_TYPES:
                raise ValueError(f"must be one of {', '.join(COMPUTE_TYPES)}")
        return value

    @field_validator(
        "local_file_dirs",
        "admin_api_keys",
        "trusted_proxies",
        "cors_origins",
        "api_keys",
        "models",
        "preload_models",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("authorized_mails", "log_authorized_mails", mode="before")
    @classmethod
    def _split_mails(cls, value: object) -> object:
        if isinstance(value, str):
            return [mail.lower() for mail in value.replace(",", " ").split()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("max_model")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in MODEL_SIZES:
            raise ValueError(f"must be one of {', '.join(MODEL_SIZES)}")
        return value.strip().lower() if value else None

    @field_validator("log_rotation_when", "log_rotation", mode="before")
    @classmethod
    def _upper_when(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("local_file_dirs")
    @classmethod
    def _check_dirs(cls, value: list[Path]) -> list[Path]:
        resolved = []
        for path in value:
            if not path.is_absolute():
                raise ValueError(f"{path} is not an absolute path")
            if not path.is_dir():
                raise ValueError(f"{path} is not a directory")
            resolved.append(path.resolve())
        return resolved

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        aliases = {}
        for item in _split_csv(value):  # type: ignore[union-attr]
            name, _, target = item.partition("=")
            if not name.strip():
                raise ValueError(f"{item!r}: an alias needs a name (`alias=model`)")
            aliases[name.strip().lower()] = target.strip()
        return aliases

    @field_validator("model_ttls", mode="before")
    @classmethod
    def _parse_ttls(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        ttls: dict[str, float | None] = {}
        for item in _split_csv(value):  # type: ignore[union-attr]
            name, sep, seconds = item.rpartition("=")
            if not sep or not name.strip():
                raise ValueError(f"{item!r}: expected `model=seconds`")
            try:
                number = float(seconds)
            except ValueError:
                raise ValueError(f"{item!r}: {seconds!r} is not a number of seconds") from None
            ttls[name.strip()] = None if number < 0 else number
        return ttls

    @model_validator(mode="after")
    def _seed_names(self) -> Settings:
        """The second seed's names for some settings: LISTEN and LOG_ROTATION win, mail
        lists add up."""
        if self.listen:
            self.host = self.listen
        if self.log_rotation:
            self.log_rotation_when = self.log_rotation
        for mail in self.log_authorized_mails:
            if mail not in self.authorized_mails:
                self.authorized_mails.append(mail)
        return self

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        if value is not None and not value.startswith("rediss://") and "ssl_" in value:
            raise ValueError("ssl_* options need rediss:// (TLS)")
        return value

    @model_validator(mode="after")
    def _check_scale_out(self) -> Settings:
        if self.queue_backend == "redis" and not self.redis_url:
            raise ValueError("REDIS_URL: needed with QUEUE_BACKEND=redis")
        if self.role != "all" and self.queue_backend != "redis":
            raise ValueError(f"ROLE={self.role} needs QUEUE_BACKEND=redis (a shared queue)")
        if self.sync_via_workers and self.queue_backend != "redis":
            raise ValueError("SYNC_VIA_WORKERS needs QUEUE_BACKEND=redis")
        return self

    @field_validator("max_uploads_in_memory_mb")
    @classmethod
    def _room_for_one_upload(cls, value: float | None, info: ValidationInfo) -> float | None:
        upload_mb = info.data.get("max_upload_mb")
        if value is not None and upload_mb is not None and value < upload_mb:
            raise ValueError(f"must be at least MAX_UPLOAD_MB ({upload_mb:g})")
        return value

    @field_validator("model_id")
    @classmethod
    def _check_model_id(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        looks_like_path = value.startswith(("/", "./", "../", "~")) or os.sep + os.sep in value
        if looks_like_path and not Path(value).expanduser().is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_uploads_in_memory_bytes(self) -> int:
        megabytes = self.max_uploads_in_memory_mb or max(1024, self.max_upload_mb)
        return int(megabytes * 1024 * 1024)

    @property
    def realtime_max_buffer_bytes(self) -> int:
        return int(self.realtime_max_buffer_mb * 1024 * 1024)

    @property
    def realtime_max_message_bytes(self) -> int:
        return int(self.realtime_max_message_mb * 1024 * 1024)

    @property
    def max_decoded_audio_bytes(self) -> int:
        return int(self.max_decoded_audio_mb * 1024 * 1024)


# Never echoed back in an error message: they may hold a password.
SECRET_SETTINGS = frozenset({"REDIS_URL"})


class ConfigError(Exception):
    """Invalid configuration; the message names each offending environment variable."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, turning validation errors into a `ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:  # a check across settings names them itself
                lines.append(error["msg"].removeprefix("Value error, "))
                continue
            name = str(error["loc"][0]).upper()
            raw = os.environ.get(name)
            shown = raw is not None and name not in SECRET_SETTINGS
            got = f" (got {raw!r})" if shown else ""
            lines.append(f"{name}: {error['msg']}{got}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
