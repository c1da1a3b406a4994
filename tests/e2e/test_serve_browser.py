"""The page of `mamlpp serve` in a real browser: headless Chromium driven by Playwright names the
classes, uploads support and query images through the file inputs, presses Predict and reads
the predictions from the page, which must equal the API's answer; then an API error must show
on the page. Screenshots go to $MAMLPP_SCREENSHOTS (for a person to look at), else to the test's
temporary folder.

Needs Debian's Chromium and Playwright's Python package (Playwright's own browser download is
not used): ``apt-get install chromium; pip install playwright``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import form, held_out_characters, make_task, serving, train_tiny_run

CHROMIUM = Path("/usr/bin/chromium")
HOW = "apt-get install chromium; pip install playwright"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing: {HOW}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright is missing: {HOW}")
httpx = pytest.importorskip("httpx", reason="pip install httpx")
pytest.importorskip("fastapi", reason='the serve extra is missing: pip install "mamlpp[serve]"')
expect = sync_api.expect

pytestmark = pytest.mark.slow
WAYS = 5


@pytest.fixture(scope="module")
def run_dir(omniglot_dir, tmp_path_factory) -> Path:
    return train_tiny_run(omniglot_dir, tmp_path_factory.mktemp("serve-browser-run"))


@pytest.fixture(scope="module")
def characters(omniglot_dir) -> dict[str, dict[str, bytes]]:
    return held_out_characters(omniglot_dir)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _short(name: str) -> str:
    """'Angelic_character03' -> 'Angelic 03': a name a person would type."""
    alphabet, _, number = name.partition("_character")
    return f"{alphabet.replace('_', ' ')} {number}"


def _files(images: list[tuple[str, bytes]]) -> list[dict]:
    return [{"name": name, "mimeType": "image/png", "buffer": data} for name, data in images]


def _read_results(page) -> list[dict]:
    """What the page shows for each query: file, predicted class, every class's probability."""
    return page.eval_on_selector_all(
        "#results .result",
        """items => items.map(item => ({
            file: item.dataset.file,
            predicted: item.querySelector('.predicted-class').textContent,
            rows: Array.from(item.querySelectorAll('.bar-row')).map(row => ({
                name: row.dataset.class,
                probability: Number(row.dataset.probability),
                shown: row.querySelector('.bar-value').textContent,
            })),
        }))""",
    )


def test_the_page_predicts_what_the_api_predicts(run_dir, characters, browser, tmp_path) -> None:
    screenshots = Path(os.environ.get("MAMLPP_SCREENSHOTS") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    originals = sorted(characters)[:WAYS]
    support, query = make_task(characters, originals, shots=1, queries=2)
    names = [_short(n) for n in originals]
    named = dict(zip(names, support.values(), strict=True))

    with serving(run_dir) as url:
        expected = httpx.post(url + "predict", files=form(named, query), timeout=60).json()
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        try:
            page.goto(url)
            page.wait_for_selector(f"#class-name-{WAYS - 1}")
            assert page.locator(".class-card").count() == WAYS  # one card per way, from /model
            assert "depend on the batch" in page.locator("#batch-note").inner_text()
            for i, name in enumerate(names):
                page.fill(f"#class-name-{i}", name)
                page.set_input_files(f"#support-files-{i}", _files(named[name]))
            # Dropping a file onto a box adds it; its x button removes it again.
            page.eval_on_selector(
                "#query-box",
                """(box, bytes) => {
                    const data = new DataTransfer();
                    data.items.add(new File([new Uint8Array(bytes)], "dropped.png",
                                            {type: "image/png"}));
                    box.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
                }""",
                list(query[0][1]),
            )
            expect(page.locator("#query-count")).to_have_text("1 image")
            page.click("#query-thumbs .remove")
            expect(page.locator("#query-count")).to_have_text("No images yet.")
            page.set_input_files("#query-files", _files(query))
            assert page.locator("#query-thumbs img").count() == len(query)
            page.click("#predict")
            expect(page.locator("#results .result")).to_have_count(len(query))
            shown = _read_results(page)
            assert problems == []  # no script error, no refused resource (the CSP holds)
            page.screenshot(path=str(screenshots / "page.png"), full_page=True)

            assert [r["file"] for r in shown] == [p["file"] for p in expected["predictions"]]
            for row, answer in zip(shown, expected["predictions"], strict=True):
                assert row["predicted"] == answer["predicted"]
                assert [r["name"] for r in row["rows"]] == expected["classes"]
                for bar in row["rows"]:
                    p = answer["probabilities"][bar["name"]]
                    assert bar["probability"] == p  # the exact number, as sent
                    assert bar["shown"] == f"{100 * p:.1f}%"
            assert page.locator("#error").is_hidden()
            page.set_viewport_size({"width": 420, "height": 900})  # a phone's width
            page.locator("#results-heading").scroll_into_view_if_needed()
            page.screenshot(path=str(screenshots / "narrow.png"))
            page.set_viewport_size({"width": 1280, "height": 900})

            # An error of the API (an unreadable query image) is shown on the page.
            page.set_input_files("#query-files", _files([("notes.png", b"this is not an image")]))
            page.click("#predict")
            expect(page.locator("#error")).to_contain_text("unreadable image 'notes.png' (query)")
            assert page.locator("#results-section").is_hidden()  # no stale answer on show
            page.screenshot(path=str(screenshots / "api-error.png"), full_page=False)

            # So is a problem the page finds before sending (a class without a name).
            page.fill("#class-name-1", "")
            page.click("#predict")
            expect(page.locator("#error")).to_contain_text("class 2 has no name")
            page.screenshot(path=str(screenshots / "form-error.png"), full_page=False)
        finally:
            context.close()
