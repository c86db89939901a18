"""The one page of ``vse-serve``: search box, photo drop, result grid.

Self-contained: its style and script are inline and it loads nothing but the
server's own API and thumbnails (no CDN fonts or scripts), so it works with
no network at all. Results are written with ``textContent``, never as HTML,
so a caption or file name cannot inject markup.

The query is in the URL: ``/?q=a+dog+in+snow`` (a sentence) or ``/?id=12``
(search by indexed image 12, what clicking a result does), so a search can
be shared and survives a reload; ``k`` sets the number of results. An
uploaded photo is searched by ``POST /api/search`` with the file as body.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vse_tf search</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #f6f6f4; }
header { background: #fff; border-bottom: 1px solid #ddd; padding: 1em 1.5em; }
h1 { font-size: 1.15em; margin: 0 0 .6em; font-weight: 600; }
#info { color: #666; font-size: .85em; margin-left: .6em; font-weight: normal; }
form { display: flex; gap: .5em; max-width: 48em; }
#q { flex: 1; font-size: 1.05em; padding: .45em .6em; border: 1px solid #bbb;
  border-radius: 4px; }
button { font-size: 1em; padding: .45em 1em; border-radius: 4px; border: 1px solid #888;
  background: #2d5b8c; color: #fff; cursor: pointer; }
#drop { margin-top: .7em; max-width: 48em; padding: .7em; border: 2px dashed #bbb;
  border-radius: 6px; color: #555; font-size: .92em; }
#drop.over { border-color: #2d5b8c; background: #eef4fb; }
main { padding: 1em 1.5em; }
#status { color: #444; margin: 0 0 .8em; min-height: 1.2em; }
#error { color: #a00000; background: #fff0f0; border: 1px solid #e3b0b0; padding: .5em .8em;
  border-radius: 4px; max-width: 48em; }
#query-image img { max-height: 160px; border: 1px solid #ccc; margin-bottom: .8em; }
#results { display: grid; gap: .8em;
  grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); }
#results.text { grid-template-columns: 1fr; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 4px;
  padding: .4em; }
figure a { display: block; text-decoration: none; color: inherit; }
figure img { width: 100%; height: 170px; object-fit: contain; background: #eee; }
figcaption { font-size: .8em; color: #333; margin-top: .3em; overflow-wrap: anywhere; }
.score { color: #2d5b8c; font-variant-numeric: tabular-nums; }
#captions h2 { font-size: 1em; margin: 1.2em 0 .4em; }
#captions li { margin: .2em 0; }
</style>
</head>
<body>
<header>
  <h1>vse_tf search <span id="info"></span></h1>
  <form id="search" action="/" method="get">
    <input id="q" name="q" type="search" placeholder="Describe a picture: a dog runs on the beach"
      aria-label="Search sentence" autocomplete="off">
    <button type="submit">Search</button>
  </form>
  <div id="drop">Drop a photo here, or
    <input id="file" type="file" accept="image/*" aria-label="Search by photo">
    to find similar pictures.</div>
</header>
<main>
  <p id="error" role="alert" hidden></p>
  <p id="status" aria-live="polite"></p>
  <div id="query-image"></div>
  <div id="results"></div>
  <section id="captions" hidden><h2>Captions for this picture</h2><ol></ol></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const K = Math.max(1, Math.min(100, parseInt(params.get("k") || "12", 10) || 12));
let kind = "image";
let uploadUrl = null;

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function clear() {
  $("results").replaceChildren();
  $("query-image").replaceChildren();
  $("captions").hidden = true;
  $("captions").querySelector("ol").replaceChildren();
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function queryImage(src, alt) {
  $("query-image").replaceChildren(el("img", {src: src, alt: alt, id: "query-thumb"}));
}

function render(body) {
  const results = $("results");
  results.className = body.kind === "image" ? "" : "text";
  for (const r of body.results) {
    const figure = el("figure", {"class": "result", "data-id": String(r.id),
                                 "data-rank": String(r.rank)});
    if (body.kind === "image") {
      const link = el("a", {href: "/?id=" + r.id + (K !== 12 ? "&k=" + K : ""),
                            title: "Search with this picture"});
      link.append(el("img", {src: r.thumbnail, alt: r.name, loading: "lazy"}));
      link.addEventListener("click", (event) => {
        event.preventDefault();
        searchId(r.id, true);
      });
      figure.append(link);
    }
    const caption = el("figcaption");
    caption.append(el("span", {"class": "rank"}, "#" + r.rank + " "),
                   el("span", {"class": "score"}, r.score.toFixed(4)),
                   document.createTextNode(" " + (body.kind === "image" ? r.name : r.item)));
    figure.append(caption);
    results.append(figure);
  }
  if (body.captions && body.captions.length) {
    const list = $("captions").querySelector("ol");
    for (const c of body.captions) {
      const item = el("li", {"class": "caption"});
      item.append(el("span", {"class": "score"}, c.score.toFixed(4)),
                  document.createTextNode(" " + c.item));
      list.append(item);
    }
    $("captions").hidden = false;
  }
}

async function run(url, options, what) {
  showError("");
  clear();
  document.body.dataset.state = "searching";
  $("status").textContent = "Searching\\u2026";
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    $("status").textContent = "";
    showError("The server did not answer (" + error + ").");
    document.body.dataset.state = "error";
    return;
  }
  let body;
  try {
    body = await response.json();
  } catch (error) {
    body = {error: "The server answered " + response.status + "."};
  }
  if (!response.ok) {
    $("status").textContent = "";
    showError(body.error || ("The server answered " + response.status + "."));
    document.body.dataset.state = "error";
    return;
  }
  if (what.image) queryImage(what.image, what.label);
  else if (body.query && body.query.thumbnail) queryImage(body.query.thumbnail, body.query.name);
  $("status").textContent = body.results.length + " of " + body.count + " " + body.kind +
    "s for " + what.label;
  render(body);
  document.body.dataset.state = "done";
}

function searchText(q, push) {
  $("q").value = q;
  if (push) history.pushState(null, "", "/?q=" + encodeURIComponent(q) +
                              (K !== 12 ? "&k=" + K : ""));
  run("/api/search?k=" + K + "&q=" + encodeURIComponent(q), {}, {label: "\\u201c" + q + "\\u201d"});
}

function searchId(id, push) {
  if (push) history.pushState(null, "", "/?id=" + id + (K !== 12 ? "&k=" + K : ""));
  run("/api/search?k=" + K + "&id=" + encodeURIComponent(id), {}, {label: "picture " + id});
}

function searchFile(file) {
  if (!file) return;
  history.pushState(null, "", "/");
  if (uploadUrl) URL.revokeObjectURL(uploadUrl);
  uploadUrl = URL.createObjectURL(file);
  run("/api/search?k=" + K, {method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream"}},
      {label: file.name, image: uploadUrl});
}

function fromUrl() {
  const p = new URLSearchParams(location.search);
  document.body.dataset.state = "idle";
  if (p.get("q")) searchText(p.get("q"), false);
  else if (p.get("id")) searchId(p.get("id"), false);
  else { clear(); $("status").textContent = ""; showError(""); $("q").value = ""; }
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = $("q").value.trim();
  if (q) searchText(q, true);
});
$("file").addEventListener("change", () => searchFile($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchFile(event.dataTransfer.files[0]);
});
window.addEventListener("popstate", fromUrl);
fetch("/api/info").then((r) => r.json()).then((info) => {
  kind = info.kind;
  $("info").textContent = info.count + " " + info.kind + "s" +
    (info.captions ? ", " + info.captions + " captions" : "");
}).catch(() => {});
fromUrl();
</script>
</body>
</html>
"""
