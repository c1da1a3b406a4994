"""Helpers shared by the tests of `mamlpp serve` and of what a trained run answers (exported model
files, batch dependence, the page in a browser): a small run trained in seconds on real
Omniglot, held-out characters made into tasks, the multipart form of POST /predict, and
`mamlpp serve` as a subprocess."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from own_images_helpers import omniglot_characters, write_classes

from mamlpp.cli.main import main

Images = list[tuple[str, bytes]]  # (file name, encoded image)


def train_tiny_run(omniglot_dir: Path, root: Path) -> Path:
    """A MAML++ run of 4 meta-iterations on 20 background characters (about 2 s on a 2-core CPU):
    enough to be a real trained run folder; the tests check plumbing, not accuracy."""
    characters = omniglot_characters(omniglot_dir / "images_background.zip", 30)
    names = sorted(characters)
    for split, chosen in (("train", names[:20]), ("val", names[20:25]), ("test", names[25:])):
        write_classes(root / "data" / split, {n: characters[n] for n in chosen})
    run = root / "run"
    args = ["train", "--preset", "synthetic", "--data-dir", str(root / "data"), "--out", str(run)]
    settings = {
        "data.dataset": "folder",
        "model.channels": 16,
        "train.epochs": 1,
        "train.iterations_per_epoch": 4,
        "eval.val_tasks": 4,
        "eval.test_tasks": 4,
        "eval.top_k": 1,
    }
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert main([*args, "--quiet"]) == 0
    return run


def held_out_characters(omniglot_dir: Path) -> dict[str, dict[str, bytes]]:
    """10 characters of the evaluation alphabets (never trained on): {name: {file: png}}."""
    return omniglot_characters(omniglot_dir / "images_evaluation.zip", 10, skip=100)


def make_task(
    characters: dict[str, dict[str, bytes]],
    classes: list[str],
    shots: int = 1,
    queries: int = 1,
    offset: int = 0,
) -> tuple[dict[str, Images], Images]:
    """Support {class: [(file, png)]} and query [(class__file, png)] from ``characters``."""
    support: dict[str, Images] = {}
    query: Images = []
    for name in classes:
        files = sorted(characters[name])[offset : offset + shots + queries]
        support[name] = [(f, characters[name][f]) for f in files[:shots]]
        query += [(f"{name}__{f}", characters[name][f]) for f in files[shots:]]
    return support, query


def form(support: dict[str, Images], query: Images) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart fields of POST /predict: support.<class name> and query files."""
    fields = [
        (f"support.{name}", (file, data, "image/png"))
        for name, images in support.items()
        for file, data in images
    ]
    return fields + [("query", (file, data, "image/png")) for file, data in query]


@contextlib.contextmanager
def serving(model: Path, *extra: str, timeout: float = 120.0) -> Iterator[str]:
    """``mamlpp serve MODEL --port 0`` as a subprocess: yields its URL once /health answers;
    the process is always terminated."""
    command = [sys.executable, "-m", "mamlpp", "serve", str(model), "--port", "0", *extra]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"mamlpp serve printed no URL in {timeout} s: {seen}"
                ) from None
            if line is None:
                raise AssertionError(f"mamlpp serve exited ({process.wait()}): {''.join(seen)}")
            seen.append(line)
            found = re.search(r"open (http://\S+/)", line)
            url = found.group(1) if found else None
        while True:
            try:
                with urllib.request.urlopen(url + "health", timeout=5) as response:
                    assert json.load(response) == {"status": "ok"}
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
