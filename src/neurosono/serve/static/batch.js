// Several cases: pair NAME_tv.* with NAME_tc.*, send two at a time, fill the table, offer a CSV.
"use strict";
(function () {
  const form = document.getElementById("batch-form");
  const status = document.getElementById("status");
  const body = document.querySelector("#batch-table tbody");
  const csvButton = document.getElementById("csv");
  const PLANE = /^(.*?)[_-](tv|tc)\.[a-z0-9]+$/i;
  let rows = [];

  function pairs(files) {
    const cases = new Map();
    for (const file of files) {
      const match = PLANE.exec(file.name);
      if (!match) continue;
      const name = match[1];
      if (!cases.has(name)) cases.set(name, {});
      cases.get(name)[match[2].toLowerCase()] = file;
    }
    return [...cases.entries()].sort(function (a, b) { return a[0] < b[0] ? -1 : 1; });
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  async function runCase(name, files, tr, record) {
    const data = new FormData();
    for (const plane of ["tv", "tc"]) if (files[plane]) data.append(plane, files[plane]);
    const ga = document.getElementById("batch-ga").value.trim();
    const spacing = document.getElementById("batch-spacing").value.trim();
    if (ga) data.append("ga_weeks", ga);
    if (spacing) data.append("spacing_mm", spacing);
    const response = await fetch("/api/v1/predict", { method: "POST", body: data, headers: neurosonoHeaders() });
    tr.replaceChildren();
    const head = document.createElement("th");
    head.scope = "row";
    head.textContent = name;
    tr.appendChild(head);
    cell(tr, Object.keys(files).sort().join("+").toUpperCase());
    if (!response.ok) {
      const problem = await neurosonoProblem(response);
      cell(tr, "");
      cell(tr, "failed");
      cell(tr, "");
      cell(tr, "");
      cell(tr, problem);
      Object.assign(record, { decision: "failed", warnings: problem });
      return;
    }
    const result = await response.json();
    const biometry = result.biometry || { values: {}, hints: [] };
    const hints = biometry.hints.filter(function (h) { return h.present; }).map(function (h) { return h.finding; });
    cell(tr, result.p_abnormal.toFixed(3));
    cell(tr, result.decision);
    cell(tr, biometry.values.hc_mm !== undefined ? biometry.values.hc_mm.toFixed(1) : "");
    cell(tr, hints.join(", "));
    cell(tr, result.warnings.join("; "));
    Object.assign(record, {
      p_abnormal: result.p_abnormal, decision: result.decision, threshold: result.threshold,
      hc_mm: biometry.values.hc_mm ?? "", hints: hints.join(";"), warnings: result.warnings.join("; "),
    });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const files = [...document.getElementById("files").files, ...document.getElementById("folder").files];
    const cases = pairs(files);
    if (!cases.length) {
      status.textContent = "No NAME_tv.* / NAME_tc.* images among the files chosen.";
      status.className = "status error";
      return;
    }
    body.replaceChildren();
    rows = [];
    csvButton.disabled = true;
    const queue = cases.map(function ([name, planes]) {
      const tr = document.createElement("tr");
      const head = document.createElement("th");
      head.scope = "row";
      head.textContent = name;
      tr.appendChild(head);
      cell(tr, "waiting…").colSpan = 6;
      body.appendChild(tr);
      const record = { case_id: name };
      rows.push(record);
      return { name: name, planes: planes, tr: tr, record: record };
    });
    let done = 0;
    status.className = "status";
    status.textContent = "0 of " + queue.length + " cases done";
    async function worker() {
      while (queue.length) {
        const job = queue.shift();
        try {
          await runCase(job.name, job.planes, job.tr, job.record);
        } catch (error) {
          Object.assign(job.record, { decision: "failed", warnings: String(error) });
        }
        done += 1;
        status.textContent = done + " of " + rows.length + " cases done";
      }
    }
    await Promise.all([worker(), worker()]);
    csvButton.disabled = false;
  });

  csvButton.addEventListener("click", function () {
    const columns = ["case_id", "p_abnormal", "decision", "threshold", "hc_mm", "hints", "warnings"];
    const quote = function (value) {
      const text = String(value ?? "");
      return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
    };
    const lines = [columns.join(",")].concat(rows.map(function (row) {
      return columns.map(function (c) { return quote(row[c]); }).join(",");
    }));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    link.download = "neurosono_batch.csv";
    link.click();
  });
})();
