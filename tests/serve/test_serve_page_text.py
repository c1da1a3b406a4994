"""What the page says about image sizes comes from the model (item 24): "images of any size are
resized" only when the model resizes; for data.resize=never it says the size images must have.
The page's own script (static/app.js) runs under Node with a stand-in for the browser's DOM."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources

import pytest

HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const [script, model] = [fs.readFileSync(process.argv[2], "utf8"), JSON.parse(process.argv[3])];
const texts = {};
function stub(id) {  // any property or call works; textContent is recorded per element id
  const target = function () {};
  return new Proxy(target, {
    get(_, key) {
      if (key === "textContent") return texts[id] || "";
      if (key === Symbol.toPrimitive) return () => "";
      if (key === "then") return undefined;
      return stub(id);
    },
    set(_, key, value) { if (key === "textContent") texts[id] = String(value); return true; },
    apply() { return stub(id); },
  });
}
const document = {
  getElementById: (id) => stub(id),
  createElement: () => stub("_"),
  addEventListener: () => {},
  querySelectorAll: () => [],
};
const response = { ok: true, status: 200, json: async () => model,
                   text: async () => JSON.stringify(model),
                   headers: { get: () => "application/json" } };
const context = { document, fetch: async () => response, console, URL: stub("url"),
                  window: stub("window"), FormData: function () {} };
vm.createContext(context);
vm.runInContext(script + "\nloadModel().then(() => globalThis.done = true);", context);
setTimeout(() => { console.log(texts["model-summary"] || ""); }, 200);
"""


def summary(tmp_path, **model) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (it runs the page's script here)")
    script = resources.files("mamlpp.serve").joinpath("static", "app.js")
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    body = {
        "ways": 5,
        "shots": 1,
        "image_size": 28,
        "channels": 1,
        "bn_mode": "transductive",
        "batch_dependent": True,
        "techniques": [],
        "dataset": "folder",
        "checkpoints": [],
        "limits": {},
        **model,
    }
    done = subprocess.run(
        [node, str(harness), str(script), json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.slow  # starts Node
def test_the_page_says_what_a_model_without_resizing_takes(tmp_path) -> None:
    text = summary(tmp_path, resize=False)
    assert "A 5-way 1-shot model" in text  # the harness really ran the page's script
    assert "any size" not in text and "must be exactly 28x28 pixels" in text


@pytest.mark.slow  # starts Node
def test_the_page_says_images_are_resized_when_they_are(tmp_path) -> None:
    text = summary(tmp_path, resize=True)
    assert "images of any size are resized to 28x28" in text
