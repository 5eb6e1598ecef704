// Sightline dashboard: drag-and-drop, per-file upload progress, job polling. No framework.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function dropInto(zone, input, onDrop) {
  if (!zone || !input) return;
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    input.files = e.dataTransfer.files;
    if (onDrop) onDrop();
  });
}

async function poll(url, render) {
  for (;;) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    if (!r.ok) { render(null, `error ${r.status}`); return; }
    const job = await r.json();
    render(job);
    if (["done", "partial", "failed"].includes(job.state)) return job;
    await new Promise((ok) => setTimeout(ok, 500));
  }
}

function uploadOne(form, file, row) {
  return new Promise((resolve) => {
    const data = new FormData();
    data.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-CSRFToken", csrf());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) row.bar.value = e.loaded / e.total; };
    xhr.onload = () => {
      row.bar.value = 1;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = {}; }
      if (xhr.status !== 202) { row.setState("failed", (body.error && body.error.message) || xhr.statusText); resolve(); return; }
      if (body.refused && body.refused.length) { row.setState("failed", body.refused[0].message); resolve(); return; }
      row.setState("queued");
      const url = form.dataset.jobUrl.replace("JOB", body.job_id);
      poll(url, (job) => {
        if (!job) return;
        const item = (job.items || [])[0];
        if (item) row.setState(item.state, item.reason, item.image_id, item.moderation_status);
      }).then(resolve);
    };
    xhr.onerror = () => { row.setState("failed", "network error"); resolve(); };
    xhr.send(data);
  });
}

function addRow(name) {
  const tr = document.createElement("tr");
  const cell = (el) => { const td = document.createElement("td"); if (el) td.append(el); tr.append(td); return td; };
  cell(document.createTextNode(name));
  const bar = document.createElement("progress"); bar.max = 1; bar.value = 0; bar.setAttribute("aria-label", `upload of ${name}`);
  cell(bar);
  const state = cell(null);
  state.className = "state";
  document.getElementById("upload-rows").append(tr);
  return {
    bar,
    setState(value, reason, imageId, moderation) {
      const held = moderation === "quarantined" ? " (quarantined for review)" : "";
      state.textContent = value + held + (reason ? `: ${reason}` : "");
      state.dataset.state = value;
      if (imageId && value === "done") {
        const a = document.createElement("a"); a.href = `/admin/images/${imageId}`; a.textContent = " view";
        state.append(a);
      }
    },
  };
}

function setUpUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("files");
  const start = async () => {
    const files = Array.from(input.files);
    const urls = document.getElementById("urls").value.trim();
    await Promise.all(files.map((f) => uploadOne(form, f, addRow(f.name))));
    if (urls) {
      const data = new FormData(); data.append("urls", urls);
      const r = await fetch(form.action, { method: "POST", body: data, headers: { "X-CSRFToken": csrf(), Accept: "application/json" } });
      const body = await r.json();
      const row = addRow(`${urls.split("\n").length} URL(s)`); row.bar.value = 1;
      poll(form.dataset.jobUrl.replace("JOB", body.job_id), (job) => job && row.setState(job.state, JSON.stringify(job.counts)));
    }
    input.value = "";
  };
  dropInto(document.getElementById("upload-drop"), input, start);
  form.addEventListener("submit", (e) => { e.preventDefault(); start(); });
}

function setUpSearch() {
  const form = document.getElementById("search-form");
  if (!form) return;
  dropInto(document.getElementById("image-drop"), document.getElementById("file"), () => form.submit());
}

function setUpRetag() {
  const p = document.getElementById("retag-progress");
  if (!p) return;
  poll(p.dataset.jobUrl, (job) => {
    if (!job) return;
    p.textContent = `Re-tag job: ${job.state}, ${job.counts.done} of ${job.total} done`;
    p.dataset.state = job.state;
  });
}

function setUpQueue() {
  const all = document.getElementById("select-all");
  if (!all) return;
  all.addEventListener("change", () => {
    document.querySelectorAll('input[name="image_ids"]').forEach((box) => { box.checked = all.checked; });
  });
  // Keyboard review: j/k (arrows) move the highlight, x selects, a approves, r rejects
  // (the confirmation page's button has focus, so Enter confirms). With nothing
  // selected, the highlighted row is the one decided.
  const rows = Array.from(document.querySelectorAll("#queue tbody tr[data-image-id]"));
  if (!rows.length) return;
  let current = 0;
  const highlight = (i) => {
    rows[current].classList.remove("current");
    current = Math.max(0, Math.min(rows.length - 1, i));
    rows[current].classList.add("current");
    rows[current].focus({ preventScroll: true });
    rows[current].scrollIntoView({ block: "nearest" });
  };
  // After a decision the queue comes back with the highlight where it was (the decided
  // row is gone, so the next one is there), not on the first row.
  const at = parseInt(new URLSearchParams(window.location.search).get("at") || "0", 10);
  highlight(Number.isNaN(at) ? 0 : at);
  const box = (row) => row.querySelector('input[name="image_ids"]');
  const decide = (button) => {
    if (!rows.some((row) => box(row).checked)) box(rows[current]).checked = true;
    const back = document.querySelector('#review-form input[name="back"]');
    if (back) {
      const url = new URL(back.value, window.location.origin);
      url.searchParams.set("at", String(current));
      back.value = url.pathname + url.search;
    }
    document.getElementById(button).click();
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const tag = (e.target.tagName || "").toLowerCase();
    if (["input", "textarea", "select"].includes(tag) && e.target.type !== "checkbox") return;
    const keys = {
      j: () => highlight(current + 1), ArrowDown: () => highlight(current + 1),
      k: () => highlight(current - 1), ArrowUp: () => highlight(current - 1),
      x: () => { const b = box(rows[current]); b.checked = !b.checked; },
      a: () => decide("approve"), r: () => decide("reject"),
    };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });
}

document.addEventListener("DOMContentLoaded", () => { setUpUpload(); setUpSearch(); setUpRetag(); setUpQueue(); });
