"""Load test of ``mamlpp serve`` on 127.0.0.1: does its memory stay under the documented ceiling
(serve.app.memory_ceiling) whatever the number of clients, and is every answer correct or a clear
503?

    PYTHONPATH=src python benchmarks/serve_load.py [--clients 32] [--duration 30]
        [--out docs/results/serve-load]

1. The memory one picture at the pixel limit takes while it is read and brought to the model's
   size (Preprocessing.pixels), per mode, each in a fresh process (peak RSS growth / pixels, the
   peak reset through /proc/self/clear_refs first): what DECODE_BYTES_PER_PIXEL in serve/app.py
   stands for.
2. A model file (an untrained conv4 of the default size, 5-way 1-shot on 28x28 grey images: the
   server's work does not depend on the weights) is served by ``python -m mamlpp serve`` in a
   subprocess with the default limits.
3. The largest request the limits allow: 64 files (12 support images for each of 5 classes, 4
   queries), each a 6300x6300 RGBA PNG (39.7 MP, under the 40 MP limit) padded with a noise tile
   so that the body is just under the 50 MiB request limit. Answered alone first: the reference.
4. ``--clients`` threads each send that request again and again for ``--duration`` seconds (at
   most ``--max-per-client`` requests each; an answer in flight at the end is awaited). Every 200
   must give the reference's probabilities (to 1e-6); every other answer must be a 503 with
   Retry-After and one sentence; anything else (a 5xx, a connection error) is counted as a crash.
5. The server's RSS is sampled every 0.1 s (/proc/PID/status) and its peak read from VmHWM; the
   RSS after the load is read once the clients are done and the server has idled 5 s.

Writes results.json and results.md into ``--out``. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 6300  # 6300 x 6300 = 39.69 MP, under the 40 MP limit
BOUNDARY = "mamlpp-load-test-boundary"
MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


# ------------------------------------------------------------------------------ decode memory

DECODE_MODES = ("RGBA", "LA", "P", "RGB", "L", "I;16")


def _probe_png(mode: str, path: Path) -> None:
    """A SIDE x SIDE PNG of ``mode`` (P with a transparent colour), written by the parent so
    that the child's peak RSS owes nothing to making it."""
    if mode == "I;16":
        picture = Image.fromarray(np.full((SIDE, SIDE), 30000, dtype=np.uint16))
    else:
        picture = Image.new(mode, (SIDE, SIDE))
    picture.save(path, "PNG", **({"transparency": 0} if mode == "P" else {}))


def _decode_child(path: str) -> None:
    """In a fresh process: peak RSS growth of reading the PNG at ``path``, per pixel."""
    from mamlpp.data.images import Preprocessing

    data = Path(path).read_bytes()
    grey = Preprocessing(28, 1, (0.0,), (1.0,))
    grey.pixels(Image.new("L", (8, 8)))  # imports and first-use allocations before measuring
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the RSS now
    before = _status_kib(os.getpid(), "VmRSS")
    grey.pixels(data, "probe", converted=[])  # with the colour check, as serve does
    grown = _status_kib(os.getpid(), "VmHWM") - before
    print(json.dumps({"bytes_per_pixel": grown * 1024 / SIDE**2}))


def measure_decode() -> dict[str, float]:
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in DECODE_MODES:
            path = Path(tmp) / "probe.png"
            _probe_png(mode, path)
            done = subprocess.run(
                [sys.executable, __file__, "--decode-child", str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(done.stdout.strip().splitlines()[-1])["bytes_per_pixel"]
            found[mode] = round(measured, 2)
            print(f"decode {mode}: {found[mode]} bytes/pixel", flush=True)
    return found


# ------------------------------------------------------------------------------ the request


def largest_picture(file_budget: int) -> bytes:
    """A SIDE x SIDE RGBA PNG, semi-transparent, padded with a noise tile to ``file_budget``."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    pixels[..., 3] = 128
    pixels[SIDE // 3 : 2 * SIDE // 3, SIDE // 4 : 3 * SIDE // 4] = (20, 20, 20, 255)
    flat = io.BytesIO()
    Image.fromarray(pixels).save(flat, "PNG")
    # noise does not compress: a tile of n x n RGBA pixels adds about 4 n^2 bytes
    tile = int(max(0, (file_budget - len(flat.getvalue()) - 4096) / 4) ** 0.5)
    while True:
        pixels[:tile, :tile] = rng.integers(0, 256, (tile, tile, 4), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "PNG")
        if len(out.getvalue()) <= file_budget or tile == 0:
            return out.getvalue()
        pixels[:tile, :tile] = (0, 0, 0, 128)  # the background again, for a smaller tile
        tile = int(tile * 0.97)


def largest_body(request_limit: int, files: int, ways: int) -> tuple[bytes, int]:
    """The multipart body of the largest request: (body, number of query images)."""
    overhead = 200  # part headers per file, measured below
    picture = largest_picture((request_limit - files * overhead - 100) // files)
    queries = files - ways * ((files - 1) // ways)
    names = [f"support.c{i}" for i in range(ways) for _ in range((files - 1) // ways)]
    names += ["query"] * queries
    chunks = []
    for i, name in enumerate(names):
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="p{i}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        chunks += [head.encode(), picture, b"\r\n"]
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    body = b"".join(chunks)
    assert len(body) <= request_limit, (len(body), request_limit)
    return body, queries


# ------------------------------------------------------------------------------ the server


def make_model(folder: Path) -> Path:
    import torch

    from mamlpp.run.build import build_learner
    from mamlpp.run.datasource import preprocessing_for
    from mamlpp.run.experiment import build_config
    from mamlpp.run.predictor import FewShotPredictor

    config = build_config(
        {"data": {"dataset": "folder", "image_size": 28, "channels": "grey", "ways": 5}}
    )
    preprocessing = preprocessing_for(config.data)
    with torch.random.fork_rng(devices=[]):
        learner = build_learner(config, preprocessing.channels)
    path = folder / "model.safetensors"
    FewShotPredictor(config, [learner], preprocessing, ["untrained"]).export(path)
    return path


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mamlpp", "serve", str(model), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
        if found:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, found.group(1)
    process.kill()
    raise RuntimeError("the server did not start")


class Sampler(threading.Thread):
    """The server's RSS every 0.1 s until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))
            time.sleep(0.1)


# ------------------------------------------------------------------------------ the load


def post(client, url: str, body: bytes):
    return client.post(
        f"{url}/predict",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


def run_load(url: str, body: bytes, reference: list, args) -> dict:
    import httpx

    records: list[dict] = []
    lock = threading.Lock()
    start = time.monotonic()

    def client_loop(index: int) -> None:
        with httpx.Client(timeout=args.request_timeout) as client:
            for _ in range(args.max_per_client):
                if time.monotonic() - start >= args.duration:
                    return
                sent = time.monotonic()
                record: dict = {"client": index}
                try:
                    response = post(client, url, body)
                    record["status"] = response.status_code
                    record["verdict"] = verdict(response, reference)
                except httpx.HTTPError as error:
                    record["status"] = None
                    record["verdict"] = f"connection error: {type(error).__name__}"
                record["latency_s"] = time.monotonic() - sent
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    return {"records": records, "wall_s": wall}


def verdict(response, reference: list) -> str:
    if response.status_code == 200:
        got = [list(p["probabilities"].values()) for p in response.json()["predictions"]]
        same = np.allclose(np.asarray(got), np.asarray(reference), atol=1e-6, rtol=0)
        return "correct" if same else "WRONG"
    if response.status_code in (503, 429):
        body = response.json()
        ok = (
            list(body) == ["error"]
            and "\n" not in body["error"]
            and int(response.headers.get("retry-after", "0")) >= 1
        )
        return "busy" if ok else "unclear busy answer"
    return f"unexpected {response.status_code}: {response.text[:100]}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending")
    parser.add_argument("--max-per-client", type=int, default=20)
    parser.add_argument("--request-timeout", type=float, default=900.0)
    parser.add_argument("--out", default="docs/results/serve-load")
    parser.add_argument("--decode-child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--regenerate", action="store_true", help="rewrite results.md from results.json only"
    )
    args = parser.parse_args()
    if args.regenerate:
        result = json.loads((Path(args.out) / "results.json").read_text())
        (Path(args.out) / "results.md").write_text(report(result))
        return 0
    if args.decode_child:
        _decode_child(args.decode_child)
        return 0
    if not Path("/proc/self/status").is_file():
        raise SystemExit("this load test reads /proc: Linux only")

    import httpx

    from mamlpp.serve.app import DECODE_BYTES_PER_PIXEL, Limits, memory_ceiling

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    decode = measure_decode()
    limits = Limits()
    body, queries = largest_body(limits.max_request_bytes, limits.max_files, 5)
    print(f"request body: {len(body) / MIB:.2f} MiB, {limits.max_files} files", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp))
        process, url = start_server(model)
        try:
            with httpx.Client(timeout=60) as client:  # warm up with a small request
                small = io.BytesIO()
                Image.new("L", (28, 28)).save(small, "PNG")
                files = [(f"support.c{i}", ("s.png", small.getvalue())) for i in range(5)]
                files.append(("query", ("q.png", small.getvalue())))
                assert client.post(f"{url}/predict", files=files).status_code == 200
            base_kib = _status_kib(process.pid, "VmRSS")
            ceiling = memory_ceiling(limits, base_kib * 1024)
            sampler = Sampler(process.pid)
            sampler.start()
            with httpx.Client(timeout=args.request_timeout) as client:
                sent = time.monotonic()
                first = post(client, url, body)
                alone_s = time.monotonic() - sent
            assert first.status_code == 200, first.text
            reference = [list(p["probabilities"].values()) for p in first.json()["predictions"]]
            assert len(reference) == queries
            print(f"alone: {alone_s:.1f} s; load of {args.clients} clients ...", flush=True)
            load = run_load(url, body, reference, args)
            time.sleep(5)
            after_kib = _status_kib(process.pid, "VmRSS")
            sampler.stop.set()
            sampler.join()
            hwm_kib = _status_kib(process.pid, "VmHWM")
        finally:
            process.terminate()
            process.wait(timeout=30)
    records = load["records"]
    latencies = [r["latency_s"] for r in records]
    by_verdict: dict[str, int] = {}
    for record in records:
        by_verdict[record["verdict"]] = by_verdict.get(record["verdict"], 0) + 1
    ok_latency = [r["latency_s"] for r in records if r["verdict"] == "correct"]
    busy_latency = [r["latency_s"] for r in records if r["verdict"] == "busy"]
    crashes = sum(1 for r in records if r["verdict"] not in ("correct", "busy"))
    peak_kib = max(hwm_kib, sampler.peak_kib)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "shared": "yes: other processes ran on the machine during the test",
        },
        "limits": {k: v for k, v in vars(limits).items()},
        "decode_bytes_per_pixel_measured": decode,
        "decode_bytes_per_pixel_counted": DECODE_BYTES_PER_PIXEL,
        "request": {
            "files": limits.max_files,
            "body_mib": round(len(body) / MIB, 2),
            "pixels_per_file": SIDE * SIDE,
            "queries": queries,
        },
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": round(load["wall_s"], 1),
        "alone_s": round(alone_s, 1),
        "answers": len(records),
        "verdicts": by_verdict,
        "crashes": crashes,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 2),
            "p99": round(percentile(latencies, 99), 2),
            "correct_p50": round(percentile(ok_latency, 50), 2),
            "correct_p99": round(percentile(ok_latency, 99), 2),
            "busy_p50": round(percentile(busy_latency, 50), 2),
            "busy_p99": round(percentile(busy_latency, 99), 2),
        },
        "requests_per_s": round(len(records) / load["wall_s"], 3),
        "correct_per_s": round(len(ok_latency) / load["wall_s"], 3),
        "rss_mib": {
            "base": round(base_kib / 1024, 1),
            "peak": round(peak_kib / 1024, 1),
            "after": round(after_kib / 1024, 1),
            "ceiling": round(ceiling / MIB, 1),
        },
        "within_ceiling": peak_kib * 1024 <= ceiling,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(report(result))
    print(json.dumps(result, indent=2))
    return 0 if result["within_ceiling"] and crashes == 0 else 1


def report(r: dict) -> str:
    lat, rss, m = r["latency_s"], r["rss_mib"], r["machine"]
    verdicts = ", ".join(f"{k}: {v}" for k, v in sorted(r["verdicts"].items()))
    decode = ", ".join(f"{k} {v}" for k, v in r["decode_bytes_per_pixel_measured"].items())
    return f"""# `mamlpp serve` under load

Written by `python benchmarks/serve_load.py --clients {r["clients"]} --duration {r["duration_s"]:g}`
(see its docstring for the method). {r["clients"]} clients
on 127.0.0.1 each sent the largest request the default limits allow ({r["request"]["files"]}
RGBA PNGs of {r["request"]["pixels_per_file"]:,} pixels, {r["request"]["body_mib"]} MiB per
request), and sent it again after each answer until {r["duration_s"]:g} s had passed; answers
still in flight were awaited (wall time {r["wall_s"]} s): {r["answers"]} answers in all.
The server ran with the default limits: at most
{r["limits"]["max_concurrent"]} requests decoded and predicted at once, the others waiting up to
{r["limits"]["queue_timeout_s"]:g} s for a turn, then answered 503 with Retry-After.

**Machine:** {m["cpus"]} CPU cores (load average {m["load_average_before"][0]} before,
{m["load_average_after"][0]} after, the test's own work included; with other work on the
machine the times are upper bounds).

| figure | value |
|---|---|
| answers | {r["answers"]} ({verdicts}) |
| crashes (5xx other than 503, connection errors, wrong probabilities) | {r["crashes"]} |
| one request alone, before the load | {r["alone_s"]} s |
| latency p50 / p99, all answers | {lat["p50"]} s / {lat["p99"]} s |
| latency p50 / p99, correct answers | {lat["correct_p50"]} s / {lat["correct_p99"]} s |
| latency p50 / p99, 503 answers | {lat["busy_p50"]} s / {lat["busy_p99"]} s |
| requests per second (all answers / correct ones) | {r["requests_per_s"]} / {r["correct_per_s"]} |
| server RSS before the load (model loaded) | {rss["base"]} MiB |
| server RSS peak | {rss["peak"]} MiB |
| server RSS 5 s after the load | {rss["after"]} MiB |
| documented ceiling (docs/serve.md) | {rss["ceiling"]} MiB |
| peak within the ceiling | {"yes" if r["within_ceiling"] else "NO"} |

Every correct answer equals the probabilities of the same request answered alone (to 1e-6).
Decoding one picture at the pixel limit, measured per mode in a fresh process (peak RSS growth
per pixel, bytes): {decode}; the ceiling counts {r["decode_bytes_per_pixel_counted"]}.
"""


if __name__ == "__main__":
    sys.exit(main())
