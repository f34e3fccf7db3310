// Shared by the pages: the bearer token (kept in this tab only) and problem+json messages.
"use strict";
function neurosonoHeaders() {
  const field = document.getElementById("token");
  if (!field) return {};
  if (field.value) sessionStorage.setItem("neurosono-token", field.value);
  const token = field.value || sessionStorage.getItem("neurosono-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}
async function neurosonoProblem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || ("HTTP " + response.status);
  } catch (e) {
    return "HTTP " + response.status;
  }
}
