"""The `asrd` command."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from .config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="asrd", description="Whisper speech recognition server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server (configured by env vars)")
    serve.add_argument("--host", help="overrides HOST and LISTEN")
    serve.add_argument("--port", type=int, help="overrides PORT")
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="the HTTP API only, tasks run by `asrd worker` processes (ROLE=api; needs "
        "QUEUE_BACKEND=redis)",
    )
    worker = commands.add_parser(
        "worker",
        help="run tasks from the Redis queue (ROLE=worker); serves only /hc and /metrics",
        description="Takes tasks from QUEUE_BACKEND=redis (REDIS_URL) and runs them on the "
        "model; no HTTP API, only /hc and /metrics on HOST/PORT for probes.",
    )
    worker.add_argument("--host", help="overrides HOST and LISTEN")
    worker.add_argument("--port", type=int, help="overrides PORT")
    transcribe = commands.add_parser(
        "transcribe",
        help="transcribe files, through a running asrd (--server) or in this process",
        description="Writes NAME.EXT beside each input (or into -o DIR): .json, .txt, .srt, "
        ".vtt or .verbose.json. Without --server, the model comes from the environment "
        "(MODEL_ID, DEVICE, ...), as for `asrd serve`.",
    )
    transcribe.add_argument("files", nargs="+", type=Path, metavar="FILE")
    transcribe.add_argument("--server", metavar="URL", help="a running asrd, e.g. http://host:8000")
    transcribe.add_argument(
        "--format", default="text", choices=["json", "text", "srt", "vtt", "verbose_json"]
    )
    transcribe.add_argument(
        "--model",
        help="with --server: one of the models it serves; else the model to load (else MODEL_ID)",
    )
    transcribe.add_argument("--language", help="language of the speech (ISO 639-1); else detected")
    transcribe.add_argument("--translate", action="store_true", help="output English text")
    transcribe.add_argument("-o", "--output-dir", type=Path, metavar="DIR")
    transcribe.add_argument(
        "--api-key", default=os.environ.get("ASRD_API_KEY"), help="(default: $ASRD_API_KEY)"
    )
    download = commands.add_parser(
        "download",
        help="fetch models into CACHE_DIR now (for images and air-gapped hosts)",
        description="Each MODEL in any spelling MODEL_ID takes; one already on disk is not "
        "fetched again. Without MODEL: MODEL_ID and MODELS.",
    )
    download.add_argument("models", nargs="*", metavar="MODEL")
    download.add_argument(
        "--into",
        type=Path,
        metavar="DIR",
        help="also copy each model into DIR/NAME, a plain folder, for BAKED_MODELS_DIR (images)",
    )
    commands.add_parser("env-table", help="print the table of environment variables (Markdown)")
    args = parser.parse_args(argv)

    if args.command == "transcribe":
        from .client import run

        sys.exit(
            run(
                args.files,
                server=args.server,
                fmt=args.format,
                language=args.language,
                translate=args.translate,
                out_dir=args.output_dir,
                api_key=args.api_key,
                model=args.model,
            )
        )

    if args.command == "download":
        from .download import download_models

        sys.exit(download_models(args.models, into=args.into))

    if args.command == "env-table":
        from .docs import env_table

        print(env_table())
        return

    overrides = {name: getattr(args, name) for name in ("host", "port") if getattr(args, name)}
    if args.host:
        overrides["listen"] = None  # --host wins over LISTEN too
    if args.command == "worker":
        overrides["role"] = "worker"
    elif args.no_worker:
        overrides["role"] = "api"
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"asrd: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.queue_backend == "redis" and importlib.util.find_spec("redis") is None:
        print("asrd: QUEUE_BACKEND=redis needs the `redis` package: pip install 'asrd[redis]'",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    from .server import serve

    sys.exit(serve(settings))
