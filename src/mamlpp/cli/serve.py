"""``mamlpp serve``: a trained model behind an HTTP API and a web page (:mod:`mamlpp.serve`).

The library, FastAPI and uvicorn are imported inside the handler, so ``mamlpp --help`` imports
none of them; without the optional extra the command says ``pip install "mamlpp[serve]"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mamlpp.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a trained model: a web page and an HTTP API for few-shot predictions",
        description="Load a run folder's model (or a file from `mamlpp export`) once and serve "
        "a page and an HTTP API (GET /model, POST /predict) on --host:--port. There is no "
        "authentication: keep the default --host 127.0.0.1 (see docs/serve.md).",
    )
    parser.add_argument("model", metavar="RUN_DIR|MODEL", help="a run folder, or an exported model")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="average the top-k checkpoints by validation accuracy (run folders; default 1)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.set_defaults(handler=run_serve)


def _missing_extra() -> str | None:
    """The first package of the ``serve`` extra that cannot be imported, or None."""
    for module in ("fastapi", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            return module
    return None


def _listen(host: str, port: int):  # -> socket.socket
    """A listening socket (so ``--port 0`` can print the port the system chose)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot listen on {host} port {port}: {reason}") from None


def run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    missing = _missing_extra()
    if missing is not None:
        raise ConfigError(
            f"mamlpp serve needs FastAPI, uvicorn and python-multipart ({missing} is not "
            f'installed): pip install "mamlpp[serve]"'
        )
    model = Path(args.model)
    if not model.exists():
        raise ConfigError(f"{model} does not exist (give a run folder or an exported model)")

    import uvicorn

    from mamlpp.run.build import resolve_device
    from mamlpp.run.predictor import FewShotPredictor
    from mamlpp.serve.app import create_app

    device = resolve_device(args.device)
    if model.is_file():
        if args.top_k is not None:
            raise ConfigError("--top-k applies to run folders; an exported model keeps its own")
        predictor = FewShotPredictor.from_file(model, device)
    else:
        predictor = FewShotPredictor.from_run(model, args.top_k or 1, device)
    app = create_app(predictor)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the "
            "model; the server has no authentication (see docs/serve.md)",
            file=sys.stderr,
        )
    tasks = f"{predictor.ways}-way {predictor.shots}-shot"
    print(f"serving {model} ({tasks}, {', '.join(predictor.sources)}) on {device}")
    print(f"open http://{shown}:{port}/ (Ctrl+C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
