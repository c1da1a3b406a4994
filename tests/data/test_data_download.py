"""Downloads against a local HTTP server, safe zip extraction, data dir resolution and the CLI."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

import mamlpp.data.sources as sources
from mamlpp.cli.main import main
from mamlpp.data import ChecksumError, data_dir, download_file, download_omniglot, extract_zip
from mamlpp.data.sources import RemoteFile
from mamlpp.errors import DataError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class Server:
    """A tiny HTTP server on 127.0.0.1 with per-path behaviour, recording each request's Range.

    Modes: "ok" (Range supported), "norange" (always 200 with the whole file), "cut" (stops
    sending at byte ``cut`` of the file and closes the connection), "cut-once" (cuts the first
    request only), "404".
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.cut = 40_000
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                mode = server.modes.get(self.path, "ok")
                data = server.files.get(self.path)
                if data is None or mode == "404":
                    self.send_error(404)
                    return
                start = 0
                requested = self.headers.get("Range")
                if requested and mode != "norange":
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    self.send_header("Accept-Ranges", "none" if mode == "norange" else "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                end = max(start, server.cut) if mode.startswith("cut") else len(data)
                if mode == "cut-once":
                    server.modes[self.path] = "ok"
                self.wfile.write(data[start:end])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture()
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- download_file


def test_download_success_verifies_md5_and_leaves_no_part(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    # A second call finds the verified file and does not download again.
    download_file(server.url("/f.bin"), dest, md5=md5(PAYLOAD), progress=False)
    assert len(server.requests) == 1


def test_wrong_checksum_deletes_the_download(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match="checksum mismatch .*expected md5 0{32}, got "):
        download_file(server.url("/f.bin"), tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="size mismatch .*expected 5 bytes, got 102400"):
        download_file(server.url("/f.bin"), tmp_path / "f.bin", expected_size=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_part_and_resumes_with_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "cut"
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="interrupted .*40000 of 102400.*run the command again"):
        download_file(server.url("/f.bin"), dest, md5=md5(PAYLOAD), progress=False, retries=1)
    assert not dest.exists()
    part = tmp_path / "f.bin.part"
    assert part.read_bytes() == PAYLOAD[:40_000]
    # The retry already asked for the rest.
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=40000-")]
    server.modes["/f.bin"] = "ok"
    download_file(server.url("/f.bin"), dest, md5=md5(PAYLOAD), progress=False)
    assert server.requests[-1] == ("/f.bin", "bytes=40000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_automatic_retry_resumes_within_one_call(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "cut-once"
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=40000-"]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    part = tmp_path / "f.bin.part"
    part.write_bytes(PAYLOAD[:30_000])
    server.modes["/f.bin"] = "norange"
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert server.requests == [("/f.bin", "bytes=30000-")]  # asked, was ignored
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_complete_part_file_is_finished_after_416(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_http_and_network_errors_are_one_line(server, tmp_path):
    with pytest.raises(DataError, match="download of .*/missing failed: HTTP 404") as error:
        download_file(server.url("/missing"), tmp_path / "m", progress=False)
    assert "\n" not in str(error.value)
    port = server.httpd.server_address[1]
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(DataError, match="cannot download http://127.0.0.1"):
        download_file(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_progress_goes_to_stderr(server, tmp_path, capsys):
    server.files["/f.bin"] = PAYLOAD
    download_file(server.url("/f.bin"), tmp_path / "f.bin", progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]  # not a tty: plain ASCII lines
    assert final.startswith("f.bin: 100%") and "102k/102k" in final and "B/s" in final


# ----------------------------------------------------------------------------- zips


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_extract_zip(tmp_path):
    (tmp_path / "a.zip").write_bytes(make_zip({"top/x.txt": b"x", "top/sub/y.txt": b"y"}))
    target = tmp_path / "out"
    made = extract_zip(tmp_path / "a.zip", target)
    assert made == [target / "top"]
    assert (target / "top" / "sub" / "y.txt").read_bytes() == b"y"
    assert sorted(p.name for p in target.iterdir()) == ["top"]  # no staging folder left


@pytest.mark.parametrize(
    "name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_escaping_zip_entry_is_refused_and_nothing_written(tmp_path, name):
    (tmp_path / "bad.zip").write_bytes(make_zip({"good/a.txt": b"a", name: b"evil"}))
    target = tmp_path / "deep" / "out"
    with pytest.raises(DataError, match="refusing zip entry .*escape the target folder"):
        extract_zip(tmp_path / "bad.zip", target)
    assert not target.exists() or list(target.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_corrupt_zip_entry_leaves_target_untouched(tmp_path):
    data = bytearray(make_zip({"top/a.txt": b"A" * 1000, "top/b.txt": b"B" * 1000}))
    data[data.index(b"B" * 1000) + 10] ^= 0xFF  # breaks b.txt's CRC
    (tmp_path / "c.zip").write_bytes(bytes(data))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="corrupt entry 'top/b.txt'"):
        extract_zip(tmp_path / "c.zip", target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    (tmp_path / "t.zip").write_bytes(bytes(data[:50]))
    with pytest.raises(DataError, match="not a readable zip"):
        extract_zip(tmp_path / "t.zip", target)


# ----------------------------------------------------------------------------- datasets and CLI


@pytest.fixture()
def fake_omniglot(server, monkeypatch):
    """Point the Omniglot sources at small zips on the local server (first mirror 404s)."""
    files = {}
    for name in ("images_background.zip", "images_evaluation.zip"):
        data = make_zip({f"{name[:-4]}/A/character01/0001_01.png": name.encode()})
        server.files[f"/mirror2/{name}"] = data
        files[name] = data
    remotes = tuple(
        RemoteFile(
            name,
            (server.url(f"/mirror1/{name}"), server.url(f"/mirror2/{name}")),
            md5=md5(data),
            size=len(data),
        )
        for name, data in files.items()
    )
    monkeypatch.setattr(sources, "OMNIGLOT_FILES", remotes)
    return files


def test_download_omniglot_into_data_dir_with_mirror_fallback(fake_omniglot, tmp_path, server):
    folder = download_omniglot(tmp_path, progress=False)
    assert folder == tmp_path / "omniglot"
    for name, data in fake_omniglot.items():
        assert (folder / name).read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == sorted(fake_omniglot)
    paths = [path for path, _ in server.requests]
    assert paths[0].startswith("/mirror1/") and paths[1].startswith("/mirror2/")


def test_cli_download_and_errors(fake_omniglot, tmp_path, server, capsys, monkeypatch):
    assert main(["data", "download", "omniglot", "--data-dir", str(tmp_path)]) == 0
    assert f"omniglot is ready in {tmp_path / 'omniglot'}" in capsys.readouterr().out
    # Checksum failure: exit 1 and a single error line.
    for remote in sources.OMNIGLOT_FILES:
        (tmp_path / "omniglot" / remote.name).unlink()
    bad = tuple(RemoteFile(r.name, r.urls[1:], md5="f" * 32) for r in sources.OMNIGLOT_FILES)
    monkeypatch.setattr(sources, "OMNIGLOT_FILES", bad)
    with pytest.raises(ChecksumError):
        download_omniglot(tmp_path, progress=False)
    assert main(["data", "download", "omniglot", "--data-dir", str(tmp_path)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("mamlpp: error: checksum mismatch")
    assert not (tmp_path / "omniglot" / "images_background.zip").exists()


def test_mini_imagenet_download_failure_explains_how_to_get_it(server, tmp_path, monkeypatch):
    remotes = tuple(
        RemoteFile(r.name, (server.url(f"/{r.name}"),)) for r in sources.MINI_IMAGENET_FILES
    )
    monkeypatch.setattr(sources, "MINI_IMAGENET_FILES", remotes)
    assert main(["data", "download", "mini-imagenet", "--data-dir", str(tmp_path)]) == 1
    with pytest.raises(DataError) as error:
        sources.download_mini_imagenet(tmp_path, progress=False)
    message = str(error.value)
    assert "HTTP 404" in message and "ImageNet terms of use" in message
    assert "mini-imagenet-cache-{train,val,test}.pkl" in message and "\n" not in message


def test_mini_imagenet_download_from_mirror(server, tmp_path, monkeypatch):
    remotes = []
    for r in sources.MINI_IMAGENET_FILES:
        server.files[f"/{r.name}"] = r.name.encode()
        remotes.append(RemoteFile(r.name, (server.url(f"/{r.name}"),)))
    monkeypatch.setattr(sources, "MINI_IMAGENET_FILES", tuple(remotes))
    folder = sources.download_mini_imagenet(tmp_path, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [
        "mini-imagenet-cache-test.pkl",
        "mini-imagenet-cache-train.pkl",
        "mini-imagenet-cache-validation.pkl",
    ]


def test_official_omniglot_sources_match_the_readme():
    by_name = {r.name: r for r in sources.OMNIGLOT_FILES}
    assert by_name["images_background.zip"].md5 == "68d2efa1b9178cc56df9314c21c6e718"
    assert by_name["images_evaluation.zip"].md5 == "6b91aef0f799c5bb55b94e3f2daec811"
    assert by_name["images_background.zip"].size == 9_464_212
    assert all(url.startswith("https://") for r in by_name.values() for url in r.urls)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MAMLPP_DATA", raising=False)
    assert data_dir() == tmp_path / "home" / ".cache" / "mamlpp"
    monkeypatch.setenv("MAMLPP_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert data_dir("~/x") == Path(os.path.expanduser("~/x"))
    assert not (tmp_path / "env").exists()  # resolving never creates folders


def test_cli_info_synthetic(capsys):
    assert main(["data", "info", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "train: 400 classes, 8000 images (1x28x28)" in out
    assert "cache:   (none" in out


def test_cli_info_missing_dataset_is_one_line(tmp_path, capsys):
    assert main(["data", "info", "omniglot", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Omniglot not found in" in err[0]


def test_cli_data_without_action_prints_usage(capsys):
    assert main(["data"]) == 2
    assert "download" in capsys.readouterr().err


# ----------------------------------------------------------------------------- first-hour defect 8


def _omniglot_data():
    from mamlpp.run.presets import resolve_config

    return resolve_config("quickstart", None, []).data


def test_one_zip_present_names_the_missing_one(tmp_path, monkeypatch) -> None:
    from mamlpp.run.datasource import load_splits

    (tmp_path / "images_background.zip").write_bytes(b"the user's own copy")
    monkeypatch.setattr(sources, "download_file", pytest.fail)
    with pytest.raises(DataError) as info:
        load_splits(_omniglot_data(), tmp_path, download=False, say=lambda text: None)
    assert str(info.value).startswith(
        f"missing images_evaluation.zip (or the folder images_evaluation/) in {tmp_path}"
    )


def test_a_download_fetches_only_the_missing_zip_beside_the_other(tmp_path, monkeypatch) -> None:
    from mamlpp.run.datasource import load_splits

    mine = tmp_path / "images_background.zip"
    mine.write_bytes(b"the user's own copy, whatever its md5")
    fetched = []

    def fake_download(url, dest, **kwargs):
        fetched.append(Path(dest))
        raise DataError("offline")

    monkeypatch.setattr(sources, "download_file", fake_download)
    said = []
    with pytest.raises(DataError):
        load_splits(_omniglot_data(), tmp_path, download=True, say=said.append, progress=False)
    assert fetched and all(p == tmp_path / "images_evaluation.zip" for p in fetched)
    assert "downloading images_evaluation.zip" in said[0]
    assert mine.read_bytes() == b"the user's own copy, whatever its md5"  # kept as it is


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch) -> None:
    def offline(url, dest, **kwargs):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)  # as download_file does
        raise DataError("offline")

    monkeypatch.setattr(sources, "download_file", offline)
    with pytest.raises(DataError):
        download_omniglot(tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()
