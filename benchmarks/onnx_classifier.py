"""Size and speed of the exported ONNX classifier (docs/onnx.md) against mamlpp's own prediction.

A quickstart-sized model (the ``quickstart`` preset: Conv4, 32 filters, Omniglot 28x28 grey,
5-way 1-shot, 3 inner steps), freshly initialised from the preset's seed (speed does not depend
on training), written as ``model.safetensors``, adapted to 5 Omniglot characters (1 image each,
evaluation alphabets) and exported with ``mamlpp adapt MODEL --support DIR --export-classifier``.
Measured:

* the file's size;
* onnxruntime's latency for 1 image and for 64 images (one call, batch 64), median of repeated
  runs, with onnxruntime's default threads and with one thread;
* the same prediction through mamlpp, which adapts again on every call: ``mamlpp adapt MODEL
  --support DIR --query ONE.png`` as a new process (what a script calling the command gets:
  interpreter, torch import, model load, adaptation), and in one Python process
  ``FewShotPredictor.adapt_and_predict(support, [image])`` per image (1 image; 64 images each
  alone, the prediction the file equals);
* the largest difference between the file's and mamlpp's probabilities on those 64 images.

    nice python benchmarks/onnx_classifier.py --omniglot DIR [--out docs/results/onnx-classifier]

(``DIR`` holds ``images_evaluation.zip``.) Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import mamlpp
from mamlpp.run.build import build_learner
from mamlpp.run.datasource import preprocessing_for
from mamlpp.run.predictor import FewShotPredictor
from mamlpp.run.presets import resolve_config

WAYS = 5


def characters(zip_path: Path, count: int, per_class: int) -> dict[str, list[bytes]]:
    """``count`` characters of the evaluation alphabets (from the 101st in name order)."""
    with zipfile.ZipFile(zip_path) as archive:
        members = sorted(n for n in archive.namelist() if n.endswith(".png"))
        groups: dict[str, list[str]] = {}
        for name in members:
            groups.setdefault("_".join(name.split("/")[1:3]), []).append(name)
        chosen = sorted(groups)[100 : 100 + count]
        return {c: [archive.read(n) for n in groups[c][:per_class]] for c in chosen}


def median_seconds(call: Any, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--omniglot", required=True, type=Path, help="holds images_*.zip")
    parser.add_argument("--out", type=Path, default=Path("docs/results/onnx-classifier"))
    args = parser.parse_args()
    config = resolve_config("quickstart")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        learner = build_learner(config, 1)  # freshly initialised (train.seed of the preset)
        predictor = FewShotPredictor(config, [learner], preprocessing_for(config.data, 1))
        model = tmp / "model.safetensors"
        predictor.export(model)
        data = characters(args.omniglot / "images_evaluation.zip", WAYS + 64, 2)
        names = sorted(data)
        support_dir = tmp / "support"
        for name in names[:WAYS]:
            (support_dir / name).mkdir(parents=True)
            (support_dir / name / "0.png").write_bytes(data[name][0])
        queries = [data[name][1] for name in names[WAYS:]]  # 64 PNGs of other characters
        one = tmp / "query.png"
        one.write_bytes(queries[0])

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        classifier = tmp / "classifier.onnx"
        command = [sys.executable, "-m", "mamlpp", "adapt", str(model), "--support"]
        start = time.perf_counter()
        subprocess.run(
            [*command, str(support_dir), "--export-classifier", str(classifier)],
            check=True,
            env=env,
            capture_output=True,
        )
        export_seconds = time.perf_counter() - start
        size = classifier.stat().st_size

        # The file's input: mamlpp's pixels / 255 ([64, 1, 28, 28]).
        pixels = np.stack([predictor.preprocessing.pixels(q) for q in queries])
        x64 = pixels.astype(np.float32) / 255
        latency: dict[str, dict[str, float]] = {}
        for label, threads in (("default threads", 0), ("1 thread", 1)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(
                str(classifier), options, providers=["CPUExecutionProvider"]
            )
            latency[label] = {
                "1 image": median_seconds(lambda s=session: s.run(None, {"image": x64[:1]}), 200),
                "64 images": median_seconds(lambda s=session: s.run(None, {"image": x64}), 50),
            }
        probabilities = session.run(None, {"image": x64})[0]

        # mamlpp: a new process per call (adapts every time) ...
        def cli_call() -> None:
            subprocess.run(
                [*command, str(support_dir), "--query", str(one)],
                check=True,
                env=env,
                capture_output=True,
            )

        cli_one = median_seconds(cli_call, 5, warmup=1)
        # ... and in one process: adapt_and_predict per image.
        support = {n: [(support_dir / n / "0.png").read_bytes()] for n in names[:WAYS]}
        in_process_one = median_seconds(
            lambda: predictor.adapt_and_predict(support, [queries[0]]), 20
        )
        start = time.perf_counter()
        alone = np.concatenate(
            [predictor.adapt_and_predict(support, [q]).probabilities.numpy() for q in queries]
        )
        in_process_64 = time.perf_counter() - start
        difference = float(np.abs(alone - probabilities).max())

    record = {
        "model": "quickstart preset: Conv4, 32 filters, Omniglot 28x28 grey, 5-way 1-shot, "
        "3 inner steps; freshly initialised (train.seed 0), not trained: speed only",
        "support": "5 Omniglot characters of the evaluation alphabets, 1 image each",
        "queries": "64 other characters' PNGs (105x105, resized by mamlpp's Omniglot rule)",
        "file_bytes": size,
        "export_command_seconds": export_seconds,
        "onnxruntime_seconds": latency,
        "mamlpp_adapt_command_1_image_seconds": cli_one,
        "adapt_and_predict_1_image_seconds": in_process_one,
        "adapt_and_predict_64_images_each_alone_seconds": in_process_64,
        "max_abs_probability_difference_64_images": difference,
        "environment": {
            "date": started,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "mamlpp": mamlpp.__version__,
            "commit": _commit(),
            "torch_threads_of_the_run": config.train.threads,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(record))
    print(markdown(record))
    return 0


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [header, tuple("---" for _ in header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    load = ", ".join(f"{v:.1f}" for v in env["load_average_before"])
    load_after = ", ".join(f"{v:.1f}" for v in env["load_average_after"])
    size = r["file_bytes"]
    facts = _table(
        ("what", "value"),
        [
            ("file size", f"{size:,} bytes ({size / 1e6:.2f} MB)"),
            (
                "`mamlpp adapt MODEL --support DIR --export-classifier F.onnx` (new process)",
                _ms(r["export_command_seconds"]),
            ),
            (
                "largest difference, file vs mamlpp, 64 images each alone",
                f"{r['max_abs_probability_difference_64_images']:.1e}",
            ),
        ],
    )
    rows = [
        (f"onnxruntime, {label}", _ms(v["1 image"]), f"{_ms(v['64 images'])} (one call)")
        for label, v in r["onnxruntime_seconds"].items()
    ]
    rows += [
        (
            "`mamlpp adapt MODEL --support DIR --query ONE.png` (a new process: start, load, "
            "adapt, predict)",
            _ms(r["mamlpp_adapt_command_1_image_seconds"]),
            "not run (64 processes)",
        ),
        (
            "`FewShotPredictor.adapt_and_predict(support, [image])` in one process (adapts on "
            "every call)",
            _ms(r["adapt_and_predict_1_image_seconds"]),
            f"{_ms(r['adapt_and_predict_64_images_each_alone_seconds'])} (64 calls, each image "
            "alone)",
        ),
    ]
    speed = _table(("prediction", "1 image", "64 images"), rows)
    return f"""# The exported ONNX classifier: size and speed

Written by `benchmarks/onnx_classifier.py` (docs/onnx.md). Model: {r["model"]}. Support set:
{r["support"]}. Queries: {r["queries"]}.

**Machine: {env["cpu_count"]} CPU cores** (load average {load} before, {load_after} after,
the script's own work included; with other work on the machine every time below is an upper
bound). {env["date"]}, commit {env["commit"]}, Python {env["python"]}, torch {env["torch"]},
onnxruntime {env["onnxruntime"]}.

{facts}

{speed}

onnxruntime: median of 200 runs (1 image) and 50 runs (64 images) after 3 warm-up runs, on
`float32 [N, 1, 28, 28]` already prepared (decoding and resizing the PNGs not included).
`mamlpp adapt`: median of 5 runs after 1 warm-up; `adapt_and_predict`: median of 20 calls
(decoding the 1 support and 1 query PNG included), and one pass over the 64 images. mamlpp runs
with the run's `train.threads` = {env["torch_threads_of_the_run"]} torch threads.
"""


if __name__ == "__main__":
    raise SystemExit(main())
