// The page of `mamlpp serve`: name the classes, give support and query images, POST /predict
// (fields support.<class name> and query, see docs/serve.md), and show the probabilities; or
// download the model adapted to the support images as an ONNX file (POST /classifier).
"use strict";

const state = {
  model: null,
  support: [], // one array of File per class
  query: [], // File[]
  urls: new Map(), // File -> object URL of its thumbnail
  resultUrls: [], // object URLs of the shown results (kept when the form's images change)
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function urlOf(file) {
  if (!state.urls.has(file)) state.urls.set(file, URL.createObjectURL(file));
  return state.urls.get(file);
}

function forget(files) {
  for (const file of files) {
    const url = state.urls.get(file);
    if (url) URL.revokeObjectURL(url);
    state.urls.delete(file);
  }
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

// -- errors and status -------------------------------------------------------------------------
function showError(message) {
  const box = $("error");
  box.textContent = "";
  box.append(el("strong", { text: "Error: " }), message);
  box.hidden = false;
  box.focus();
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

// -- the model ---------------------------------------------------------------------------------
async function loadModel() {
  let response;
  try {
    response = await fetch("/model");
  } catch (error) {
    showError("cannot reach the server (" + error.message + "); is `mamlpp serve` running?");
    $("model-summary").textContent = "The model's description could not be loaded.";
    return;
  }
  const body = await readJson(response);
  if (!response.ok) {
    showError(body.error || "GET /model failed with status " + response.status);
    return;
  }
  state.model = body;
  const techniques = body.techniques.length ? body.techniques.join(", ") : "plain MAML";
  $("model-summary").textContent =
    `A ${body.ways}-way ${body.shots}-shot model (${techniques}) trained on ` +
    `${body.dataset} images of ${body.image_size}x${body.image_size} pixels, ` +
    `${body.channels === 1 ? "grey" : "colour"}; ` +
    (body.resize === false
      ? `images must be exactly ${body.image_size}x${body.image_size} pixels (this model ` +
        "does not resize them). "
      : `images of any size are resized to ${body.image_size}x${body.image_size}. `) +
    `Give it exactly ${body.ways} classes.`;
  const note = $("batch-note");
  note.textContent = body.batch_dependent
    ? "Predictions depend on the batch: the query images are normalised together " +
      "(transductive batch norm), so an image's probabilities can change with the other " +
      "query images sent with it."
    : "Predictions do not depend on the batch: each query image gets the same answer " +
      "whatever other images are sent with it.";
  note.hidden = false;
  $("shots-hint").textContent = String(body.shots);
  state.support = Array.from({ length: body.ways }, () => []);
  buildClasses(body.ways);
  render();
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return { error: `the server answered ${response.status} ${response.statusText} without JSON` };
  }
}

// -- the form ----------------------------------------------------------------------------------
function buildClasses(ways) {
  const box = $("classes");
  box.textContent = "";
  for (let i = 0; i < ways; i++) {
    const nameId = `class-name-${i}`;
    const filesId = `support-files-${i}`;
    const fieldset = el("fieldset", { className: "dropzone class-card", id: `class-${i}` }, [
      el("legend", { text: `Class ${i + 1}` }),
      el("label", { for: nameId, text: "Name" }),
      el("input", {
        id: nameId,
        type: "text",
        required: "",
        autocomplete: "off",
        placeholder: "e.g. cat",
        maxlength: "200",
      }),
      el("input", {
        id: filesId,
        className: "file-input",
        type: "file",
        accept: "image/*",
        multiple: "",
      }),
      el("label", { for: filesId, className: "file-button", text: "Choose images\u2026" }),
      el("span", { className: "drop-hint", text: "or drop them onto this box" }),
      el("p", { className: "count", id: `support-count-${i}` }),
      el("ul", { className: "thumbs", id: `support-thumbs-${i}` }),
      el("button", {
        type: "button",
        className: "secondary",
        id: `support-clear-${i}`,
        text: "Remove these images",
      }),
    ]);
    box.append(fieldset);
    $(nameId).addEventListener("input", render);
    $(filesId).addEventListener("change", (event) => {
      addFiles(state.support[i], event.target.files);
      event.target.value = "";
    });
    $(`support-clear-${i}`).addEventListener("click", () => {
      forget(state.support[i]);
      state.support[i] = [];
      render();
    });
    makeDropZone(fieldset, () => state.support[i]);
  }
}

function addFiles(list, files) {
  const images = Array.from(files).filter((f) => f.type === "" || f.type.startsWith("image/"));
  const skipped = files.length - images.length;
  list.push(...images);
  if (skipped) setStatus(`${plural(skipped, "file")} skipped: not images.`);
  render();
}

function makeDropZone(zone, target) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles(target(), event.dataTransfer.files);
  });
}

function renderThumbs(list, files, onRemove) {
  list.textContent = "";
  files.forEach((file, index) => {
    const remove = el("button", {
      type: "button",
      className: "remove",
      "aria-label": `Remove ${file.name}`,
      title: `Remove ${file.name}`,
      text: "\u00d7",
    });
    remove.addEventListener("click", () => onRemove(index));
    list.append(
      el("li", {}, [el("img", { src: urlOf(file), alt: file.name, title: file.name }), remove]),
    );
  });
}

function render() {
  if (!state.model) return;
  state.support.forEach((files, i) => {
    $(`support-count-${i}`).textContent = files.length
      ? plural(files.length, "image")
      : "No images yet.";
    renderThumbs($(`support-thumbs-${i}`), files, (index) => {
      forget(files.splice(index, 1));
      render();
    });
  });
  $("query-count").textContent = state.query.length
    ? plural(state.query.length, "image")
    : "No images yet.";
  renderThumbs($("query-thumbs"), state.query, (index) => {
    forget(state.query.splice(index, 1));
    render();
  });
  $("predict").disabled = false;
  // The classifier needs a support set: at least one image in every class.
  $("download-classifier").disabled = state.support.some((files) => files.length === 0);
}

function className(i) {
  return $(`class-name-${i}`).value.trim();
}

// What is wrong with the support set, as [message, id of the element to mark], or null.
function supportProblem() {
  const names = state.support.map((_, i) => className(i));
  const unnamed = names.findIndex((n) => n === "");
  if (unnamed >= 0) return [`class ${unnamed + 1} has no name`, `class-name-${unnamed}`];
  const twice = names.findIndex((n, i) => names.indexOf(n) !== i);
  if (twice >= 0) {
    return [`two classes are named "${names[twice]}"; names must differ`, `class-name-${twice}`];
  }
  const empty = state.support.findIndex((files) => files.length === 0);
  if (empty >= 0) return [`class "${names[empty]}" has no images`, `class-${empty}`];
  return null;
}

// What is wrong with the form, as [message, id of the element to mark], or null; the server
// checks everything again.
function problem() {
  const m = state.model;
  const wrongSupport = supportProblem();
  if (wrongSupport) return wrongSupport;
  if (state.query.length === 0) return ["there are no query images to classify", "query-box"];
  const all = state.support.flat().concat(state.query);
  if (all.length > m.limits.max_files) {
    return [`${all.length} images is more than the limit of ${m.limits.max_files}`, null];
  }
  const big = all.find((f) => f.size > m.limits.max_file_bytes);
  if (big) {
    const mib = (m.limits.max_file_bytes / 1048576).toFixed(0);
    return [`${big.name} is larger than the limit of ${mib} MiB per file`, null];
  }
  return null;
}

function markInvalid(id) {
  for (const node of document.querySelectorAll("[aria-invalid]")) {
    node.removeAttribute("aria-invalid");
  }
  if (id) $(id).setAttribute("aria-invalid", "true");
}

async function predict(event) {
  event.preventDefault();
  clearError();
  const wrong = problem();
  markInvalid(wrong && wrong[1]);
  if (wrong) {
    showError(wrong[0] + ".");
    return;
  }
  $("results-section").hidden = true; // no answer to other images stays on show
  const data = new FormData();
  state.support.forEach((files, i) => {
    for (const file of files) data.append("support." + className(i), file, file.name);
  });
  const queries = state.query.slice();
  for (const file of queries) data.append("query", file, file.name);

  const button = $("predict");
  button.disabled = true;
  setStatus("Adapting to the support images and predicting\u2026");
  try {
    let response;
    try {
      response = await fetch("/predict", { method: "POST", body: data });
    } catch (error) {
      showError("the request did not reach the server (" + error.message + ").");
      setStatus("");
      return;
    }
    const body = await readJson(response);
    if (!response.ok) {
      showError(body.error || `the server answered ${response.status}`);
      setStatus("Prediction failed: see the error above.");
      return;
    }
    showResults(body, queries);
    setStatus(`Predicted ${plural(body.predictions.length, "image")}.`);
  } finally {
    button.disabled = false;
  }
}

// -- the classifier: POST /classifier, saved as a file ----------------------------------------
async function downloadClassifier() {
  clearError();
  const wrong = supportProblem();
  markInvalid(wrong && wrong[1]);
  if (wrong) {
    showError(wrong[0] + ".");
    return;
  }
  const data = new FormData();
  state.support.forEach((files, i) => {
    for (const file of files) data.append("support." + className(i), file, file.name);
  });
  const button = $("download-classifier");
  button.disabled = true;
  setStatus("Adapting to the support images and writing the classifier\u2026");
  try {
    let response;
    try {
      response = await fetch("/classifier", { method: "POST", body: data });
    } catch (error) {
      showError("the request did not reach the server (" + error.message + ").");
      setStatus("");
      return;
    }
    if (!response.ok) {
      const body = await readJson(response);
      showError(body.error || `the server answered ${response.status}`);
      setStatus("The classifier could not be made: see the error above.");
      return;
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: "classifier.onnx" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    setStatus(`Classifier downloaded (classifier.onnx, ${(blob.size / 1e6).toFixed(2)} MB).`);
  } finally {
    button.disabled = false;
  }
}

// -- results -----------------------------------------------------------------------------------
function showResults(body, queries) {
  const section = $("results-section");
  $("results-batch").textContent = body.batch_dependent
    ? `These ${plural(queries.length, "query image")} were predicted together; with ` +
      "transductive batch norm each image's probabilities depend on the others sent with it."
    : "Each query image's probabilities do not depend on the other images sent with it.";
  const notes = $("notes");
  notes.textContent = "";
  for (const text of body.notes) notes.append(el("li", { text: "Note: " + text }));

  const list = $("results");
  list.textContent = "";
  for (const url of state.resultUrls) URL.revokeObjectURL(url);
  state.resultUrls = queries.map((file) => URL.createObjectURL(file));
  body.predictions.forEach((prediction, index) => {
    const rows = el("ul", { className: "bars", "aria-label": `Probabilities for ${prediction.file}` });
    for (const name of body.classes) {
      const p = prediction.probabilities[name];
      const fill = el("span", { className: "fill" });
      fill.style.width = (100 * p).toFixed(2) + "%";
      const chosen = name === prediction.predicted;
      rows.append(
        el(
          "li",
          {
            className: chosen ? "bar-row chosen" : "bar-row",
            dataset: { class: name, probability: String(p) },
          },
          [
            el("span", { className: "bar-name", title: name, text: name }),
            el("span", { className: "bar", "aria-hidden": "true" }, [fill]),
            el("span", { className: "bar-value", text: percent(p) }),
          ],
        ),
      );
    }
    list.append(
      el("li", { className: "result", dataset: { file: prediction.file } }, [
        el("div", { className: "result-head" }, [
          el("img", { src: state.resultUrls[index], alt: prediction.file }),
          el("div", { className: "result-text" }, [
            el("p", { className: "file", text: prediction.file }),
            el("p", { className: "predicted" }, [
              "Predicted: ",
              el("strong", { className: "predicted-class", text: prediction.predicted }),
            ]),
            el("p", { className: "confidence", text: `probability ${percent(prediction.probability)}` }),
          ]),
        ]),
        rows,
      ]),
    );
  });
  section.hidden = false;
  $("results-heading").scrollIntoView({ behavior: "smooth", block: "start" });
}

// -- start ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("predict-form").addEventListener("submit", predict);
  $("download-classifier").addEventListener("click", downloadClassifier);
  $("query-files").addEventListener("change", (event) => {
    addFiles(state.query, event.target.files);
    event.target.value = "";
  });
  $("query-clear").addEventListener("click", () => {
    forget(state.query);
    state.query = [];
    render();
  });
  makeDropZone($("query-box"), () => state.query);
  // Files dropped outside a drop zone must not replace the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  loadModel();
});
