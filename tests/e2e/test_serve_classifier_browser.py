"""The page's "Download classifier" button in a real browser (headless Chromium driven by
Playwright, as tests/test_serve_browser.py): inactive until every class has an image; clicked,
it saves an ONNX file that onnxruntime loads, with the class names typed on the page, in their
order, and the probabilities /predict gives for a query image sent alone.

Needs Debian's Chromium and Playwright's Python package (see the other browser test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_serve_browser import ARGS, CHROMIUM, HOW, _files, _short

if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing: {HOW}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright is missing: {HOW}")
httpx = pytest.importorskip("httpx", reason="pip install httpx")
ort = pytest.importorskip("onnxruntime", reason='pip install "mamlpp[onnx]"')
from serve_helpers import (  # noqa: E402  (after the skips: it needs the serve extra)
    form,
    held_out_characters,
    make_task,
    serving,
    train_tiny_run,
)

from mamlpp.run.predictor import FewShotPredictor  # noqa: E402

expect = sync_api.expect
pytestmark = pytest.mark.slow
WAYS = 5


def test_the_download_button_saves_the_classifier(omniglot_dir, tmp_path) -> None:
    run_dir = train_tiny_run(omniglot_dir, tmp_path / "train")
    characters = held_out_characters(omniglot_dir)
    screenshots = Path(os.environ.get("MAMLPP_SCREENSHOTS") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    originals = sorted(characters)[WAYS : 2 * WAYS][::-1]  # typed in a non-sorted order
    support, query = make_task(characters, originals, shots=1, queries=1)
    names = [_short(n) for n in originals]
    named = dict(zip(names, support.values(), strict=True))

    with (
        serving(run_dir) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        try:
            page.goto(url)
            page.wait_for_selector(f"#class-name-{WAYS - 1}")
            button = page.locator("#download-classifier")
            expect(button).to_be_disabled()  # no support set yet
            for i, name in enumerate(names):
                page.fill(f"#class-name-{i}", name)
                page.set_input_files(f"#support-files-{i}", _files(named[name]))
                expect(button).to_be_enabled() if i == WAYS - 1 else expect(button).to_be_disabled()
            with page.expect_download() as download_info:
                button.click()
            download = download_info.value
            assert download.suggested_filename == "classifier.onnx"
            saved = tmp_path / "classifier.onnx"
            download.save_as(saved)
            expect(page.locator("#status")).to_contain_text("Classifier downloaded")
            assert page.locator("#error").is_hidden() and problems == []
            page.screenshot(path=str(screenshots / "classifier-download.png"), full_page=False)
            shown = [page.input_value(f"#class-name-{i}") for i in range(WAYS)]

            # A problem the page finds first (a class without a name) is shown, nothing sent.
            page.fill("#class-name-2", "")
            button.click()
            expect(page.locator("#error")).to_contain_text("class 3 has no name")
        finally:
            context.close()
            browser.close()

        session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["classes"]) == shown == names  # the page's names, in order
        assert meta["source"] == str(run_dir)
        # ... and the classifier /predict uses for one query image.
        answer = httpx.post(url + "predict", files=form(named, query[:1]), timeout=60).json()
    (expected,) = answer["predictions"]
    pixels = FewShotPredictor.from_run(run_dir).preprocessing.pixels(query[0][1])
    row = session.run(None, {"image": pixels[None].astype(np.float32) / 255})[0][0]
    np.testing.assert_allclose(row, [expected["probabilities"][n] for n in names], atol=1e-5)
