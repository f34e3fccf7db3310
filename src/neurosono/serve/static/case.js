// One case: drop or pick the images, send them, show the server-rendered result.
"use strict";
(function () {
  const form = document.getElementById("case-form");
  const status = document.getElementById("status");
  const result = document.getElementById("result");
  const submit = document.getElementById("submit");

  function showChosen(input) {
    const label = document.getElementById(input.id + "-chosen");
    label.textContent = input.files.length ? "chosen: " + input.files[0].name : "";
  }
  document.querySelectorAll(".drop").forEach(function (zone) {
    const input = zone.querySelector("input[type=file]");
    input.addEventListener("change", function () { showChosen(input); });
    zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer.files.length) {
        const files = new DataTransfer();
        files.items.add(event.dataTransfer.files[0]);
        input.files = files.files;
        showChosen(input);
      }
    });
  });

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const data = new FormData(form);
    for (const name of ["tv", "tc"]) {
      const file = data.get(name);
      if (file && file.size === 0 && !file.name) data.delete(name);
    }
    for (const name of ["ga_weeks", "spacing_mm", "frame"]) {
      if (!String(data.get(name) || "").trim()) data.delete(name);
    }
    if (!data.has("tv") && !data.has("tc")) {
      status.textContent = "Choose a TV and/or a TC image.";
      status.className = "status error";
      return;
    }
    status.textContent = "Analysing…";
    status.className = "status";
    submit.disabled = true;
    const started = performance.now();
    try {
      const response = await fetch("/ui/case", { method: "POST", body: data, headers: neurosonoHeaders() });
      if (!response.ok) {
        status.textContent = "Not analysed: " + (await neurosonoProblem(response));
        status.className = "status error";
        return;
      }
      result.innerHTML = await response.text();
      status.textContent = "Done in " + ((performance.now() - started) / 1000).toFixed(1) + " s.";
      document.getElementById("decision").focus();
    } catch (error) {
      status.textContent = "The server could not be reached: " + error;
      status.className = "status error";
    } finally {
      submit.disabled = false;
    }
  });
})();
