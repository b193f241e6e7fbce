// The search page: plain JavaScript over the JSON API (/v1), nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = "offshelf-token";  // kept in this tab's session storage only

function headers() {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await response.json();
  if (!response.ok) {
    if (response.status === 401) $("token").focus();
    throw new Error(`${response.status}: ${body.error}`);
  }
  return body;
}

function say(message) { $("status").textContent = message; }

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}

async function loadCollections() {
  const { collections } = await call("/v1/collections");
  const select = $("collection");
  select.replaceChildren(...collections.map((c) => {
    const option = text("option", `${c.name} (${c.count} items)`);
    option.value = c.name;
    return option;
  }));
  if (!collections.length) say("no collections yet: create one and add photos (offshelf collection create ...)");
}

async function search(event) {
  event.preventDefault();
  const photo = $("photo").files[0];
  if (!photo) return say("choose a photo first");
  const request = { k: Number($("k").value) || 8, with_thumbnails: true };
  if ($("label").value.trim()) request.filter = { labels: [$("label").value.trim()] };
  if ($("qe").checked) request.query_expansion = 1;
  const form = new FormData();
  form.append("image", photo, photo.name);
  form.append("request", JSON.stringify(request));
  say("searching...");
  try {
    const name = encodeURIComponent($("collection").value);
    const { hits } = await call(`/v1/collections/${name}/search`, { method: "POST", body: form });
    $("hits").replaceChildren(...hits.map(hitCard));
    say(hits.length ? "" : "no hits");
  } catch (error) {
    say(error.message);
  }
}

function hitCard(hit) {
  const card = document.createElement("li");
  card.className = "hit";
  card.dataset.id = hit.id;
  if (hit.thumbnail) {  // collections created with thumbnail_size keep one per image
    const image = document.createElement("img");
    image.src = `data:image/jpeg;base64,${hit.thumbnail}`;
    image.alt = hit.id;
    card.append(image);
  }
  card.append(text("strong", hit.id, "id"), text("div", hit.score.toFixed(4), "score"));
  if (hit.label) card.append(text("div", hit.label, "label"));
  const metadata = Object.entries(hit.metadata || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  if (metadata) card.append(text("div", metadata, "meta"));
  return card;
}

function showQuery() {
  const photo = $("photo").files[0];
  if (!photo) return;
  $("query").src = URL.createObjectURL(photo);
  $("query-figure").hidden = false;
}

async function loadModels() {
  const { models } = await call("/v1/models");
  const rows = models.flatMap((m) => m.versions.map((v) => {
    const row = document.createElement("tr");
    const outputs = v.outputs.map((o) => `${o.name} (${o.dim}, ${o.pooling}${o.l2_normalized ? ", L2" : ""})`);
    row.append(...[m.name, v.version, v.execution_provider, v.input, v.random_init ? "yes" : "no",
      outputs.join(", ")].map((cell) => text("td", String(cell))));
    return row;
  }));
  document.querySelector("#models tbody").replaceChildren(...rows);
}

function route() {
  const models = location.hash === "#models";
  $("models-page").hidden = !models;
  $("search-page").hidden = models;
  say("");
  (models ? loadModels() : loadCollections()).catch((error) => say(error.message));
}

function setUp() {
  $("token").value = sessionStorage.getItem(TOKEN) || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem(TOKEN, $("token").value.trim());
    route();
  });
  $("search-form").addEventListener("submit", search);
  $("photo").addEventListener("change", showQuery);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    $("photo").files = event.dataTransfer.files;
    showQuery();
  });
  window.addEventListener("hashchange", route);
  route();
}

setUp();
