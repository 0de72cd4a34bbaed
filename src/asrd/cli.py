"""The `asrd` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .config import ConfigError, Settings, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="asrd", description="Whisper speech recognition server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server (configured by env vars)")
    serve.add_argument("--host", help="overrides HOST")
    serve.add_argument("--port", type=int, help="overrides PORT")
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
    transcribe.add_argument("--language", help="language of the speech (ISO 639-1); else detected")
    transcribe.add_argument("--translate", action="store_true", help="output English text")
    transcribe.add_argument("-o", "--output-dir", type=Path, metavar="DIR")
    transcribe.add_argument(
        "--api-key", default=os.environ.get("ASRD_API_KEY"), help="(default: $ASRD_API_KEY)"
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
            )
        )

    if args.command == "env-table":
        from .docs import env_table

        print(env_table())
        return

    overrides = {name: getattr(args, name) for name in ("host", "port") if getattr(args, name)}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"asrd: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve_forever(settings))


def serve_forever(settings: Settings) -> int:
    import uvicorn

    from .app import create_app
    from .logs import setup_logging

    setup_logging(settings)
    failure: list[str] = []

    def on_load_failure(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    # "*" (the seed's default) means every interface, IPv4 and IPv6: asyncio's create_server
    # binds one socket per address family when given no host.
    host = None if settings.host in ("*", "") else settings.host

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die
            # of the signal; asrd finishes its work and exits 0 instead.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=host,
        port=settings.port,
        log_config=None,
        access_log=False,  # asrd's own access log shortens task ids
        lifespan="on",
        # The client address stays the TCP peer: X-Forwarded-For is only believed where asrd
        # decides to (TRUSTED_PROXIES), never rewritten for every request by the server.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = Server(config)
    server.run()
    if failure:
        print(f"asrd: the model could not be loaded: {failure[0]}", file=sys.stderr)
        return 1
    return 0
