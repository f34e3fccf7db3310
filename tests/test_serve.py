"""neurosono serve: every endpoint through the ASGI client, every bad input a 4xx problem+json,
the patient's identity nowhere, the queue and timeout limits, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from imagefiles import dicom_file, png_header
from neurosono.cli import app as cli_app
from neurosono.phantom.cohort import CohortConfig, generate_cohort
from neurosono.serve import ServeSettings, create_app
from neurosono.serve.engine import Engine
from neurosono.serve.problems import ProblemError
from neurosono.serve.settings import check_settings, read_token

DOCS = Path(__file__).resolve().parents[1] / "docs"
PATIENT = {"PatientName": "Quixote^Dulcinea", "PatientID": "PID-4417-XQ", "PatientBirthDate": "19910203"}
TOKEN = "s3cret-token-for-the-tests-0123"


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory) -> dict[str, Path]:
    """One phantom case at the generator's full size."""
    root = tmp_path_factory.mktemp("serve") / "cohort"
    generate_cohort(root, CohortConfig(cases=2, seed=11), workers=1)
    images = root / "images"
    case = sorted(p.name.removesuffix("_tv.png") for p in images.glob("*_tv.png"))[0]
    return {"tv": images / f"{case}_tv.png", "tc": images / f"{case}_tc.png"}


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The shipped models, loaded once for the module."""
    loaded = Engine.load(ServeSettings())
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def client(engine: Engine) -> TestClient:
    with TestClient(create_app(ServeSettings(), engine)) as test_client:
        yield test_client


def _files(pair: dict[str, Path]) -> dict:
    return {plane: (path.name, path.read_bytes(), "image/png") for plane, path in pair.items()}


def _problem(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["request_id"]
    assert "Traceback" not in body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def test_predict_returns_the_json_of_predict_json(client, phantom_pair, tmp_path, monkeypatch) -> None:
    attempts = []
    monkeypatch.setattr(
        socket.socket, "connect", lambda *a: attempts.append(a) or (_ for _ in ()).throw(OSError)
    )
    response = client.post(
        "/api/v1/predict", files=_files(phantom_pair), data={"ga_weeks": "21+3", "spacing_mm": "0.15"}
    )
    monkeypatch.undo()
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    api = response.json()
    cli = CliRunner().invoke(
        cli_app,
        [
            "predict",
            "--runtime", "onnx",
            "--tv", str(phantom_pair["tv"]),
            "--tc", str(phantom_pair["tc"]),
            "--ga-weeks", "21+3",
            "--spacing-mm", "0.15",
            "--json", str(tmp_path / "p.json"),
        ],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    expected = json.loads((tmp_path / "p.json").read_text())
    for plane in ("tv", "tc"):
        assert api["inputs"][plane].pop("path") == plane  # the field, never a client's file name
        expected["inputs"][plane].pop("path")
    assert api == expected
    assert api["biometry"]["values"]["hc_mm"] > 0 and api["ga_weeks"] == pytest.approx(21 + 3 / 7, abs=1e-3)
    assert not attempts  # no outbound network


def test_models_health_and_readiness(client, engine) -> None:
    models = client.get("/api/v1/models").json()
    assert models["notice"] == engine.info["notice"] and models["threshold"] == pytest.approx(
        engine.meta["threshold"], abs=1e-4
    )
    assert set(models["files"]) == {
        "detector_sha256",
        "classifier_sha256",
        "head_sha256",
        "structures_sha256",
    }
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in models["files"].values())
    assert "cerebellum" in models["regions"] and models["biometry"] is True
    assert client.get("/api/v1/healthz").json() == {"status": "ok"}
    ready = client.get("/api/v1/readyz").json()
    assert ready["status"] == "ready" and ready["capacity"] == engine.capacity


def test_readyz_is_503_until_the_models_are_loaded(tmp_path) -> None:
    loading = TestClient(create_app(ServeSettings()))  # outside `with`: no lifespan, nothing loads
    _problem(loading.get("/api/v1/readyz"), 503, "still loading")
    assert loading.get("/api/v1/healthz").status_code == 200
    broken = create_app(ServeSettings(model=tmp_path / "no-models", runtime="torch"))
    with TestClient(broken) as failing:  # the lifespan loads, and fails
        deadline = time.monotonic() + 30
        while broken.state.load_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _problem(failing.get("/api/v1/readyz"), 503, "could not be loaded")
        _problem(failing.post("/api/v1/predict", files={"tv": ("a.png", b"x")}), 503, "could not be loaded")
        assert "Traceback" not in broken.state.load_error


def test_the_committed_openapi_schema_is_current(client) -> None:
    served = client.get("/api/v1/openapi.json").json()
    committed = json.loads((DOCS / "openapi.json").read_text())
    assert served == committed, "regenerate it: make docs"
    body = served["paths"]["/api/v1/predict"]["post"]
    assert set(body["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) >= {"tv", "tc"}
    assert "application/problem+json" in body["responses"]["422"]["content"]


def _text_png(path: Path) -> None:
    path.write_text("not an image at all")


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


GRADIENT = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
BAD_FILES = {
    "text named .png": ("text.png", _text_png, 415, "not an image file"),
    "truncated JPEG": ("cut.jpg", _truncated_jpeg, 422, "truncated"),
    "1x1 image": ("tiny.png", lambda p: Image.new("L", (1, 1)).save(p), 422, "too small"),
    "20000x20000 image": ("huge.png", lambda p: p.write_bytes(png_header(20000, 20000)), 422, "exceeds"),
    "empty DICOM": ("empty.dcm", lambda p: p.write_bytes(b"\0" * 128 + b"DICM"), 422, "DICOM"),
    "DICOM without pixels": (
        "np.dcm",
        lambda p: dicom_file(p, GRADIENT, with_pixels=False),
        422,
        "pixel data",
    ),
    "empty file": ("zero.png", lambda p: p.write_bytes(b""), 422, "empty"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_every_bad_image_is_a_4xx_problem(client, tmp_path, kind) -> None:
    name, make, status, words = BAD_FILES[kind]
    make(tmp_path / name)
    for route in ("/api/v1/predict", "/ui/case"):
        response = client.post(route, files={"tc": (name, (tmp_path / name).read_bytes())})
        body = _problem(response, status, words)
        assert body["detail"].startswith("tc:") and name not in body["detail"]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        ({"ga_weeks": "twenty"}, 422, "ga_weeks"),
        ({"ga_weeks": "61"}, 422, "ga_weeks"),
        ({"spacing_mm": "-1"}, 422, "spacing_mm"),
        ({"spacing_mm": "nan"}, 422, "spacing_mm"),
        ({"frame": "first"}, 422, "frame"),
        ({"colour": "red"}, 422, "colour: unknown field"),
    ],
)
def test_bad_fields_are_named(client, phantom_pair, data, status, words) -> None:
    _problem(client.post("/api/v1/predict", files=_files(phantom_pair), data=data), status, words)


def test_missing_images_and_wrong_bodies(client, phantom_pair) -> None:
    _problem(client.post("/api/v1/predict", data={"ga_weeks": "21"}, files={"x": ("", b"")}), 422, "x")
    _problem(client.post("/api/v1/predict", data={"ga_weeks": "21"}), 415, "multipart")
    _problem(client.post("/api/v1/predict", json={"tv": "a.png"}), 415, "multipart")
    two = [
        ("tv", ("a.png", phantom_pair["tv"].read_bytes())),
        ("tv", ("b.png", phantom_pair["tv"].read_bytes())),
    ]
    _problem(client.post("/api/v1/predict", files=two), 422, "tv: give one image")
    _problem(client.post("/api/v1/predict", data={"tv": "text"}, files={"tc": ("", b"")}), 422, "tv")
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    _problem(
        client.post("/api/v1/predict", content=b"--xyz\r\nbroken", headers=headers), 422, "give at least"
    )
    _problem(client.get("/api/v1/nothing"), 404, "no such")
    _problem(client.get("/api/v1/predict"), 405, "GET")


def test_an_oversized_upload_is_413(engine, phantom_pair) -> None:
    small = ServeSettings(max_upload_mb=0.05)
    with TestClient(create_app(small, engine)) as limited:
        _problem(limited.post("/api/v1/predict", files=_files(phantom_pair)), 413, "0.05 MB")

        def chunks():  # no Content-Length: refused while it streams
            yield b'--b\r\nContent-Disposition: form-data; name="tv"; filename="a.png"\r\n\r\n'
            for _ in range(40):
                yield b"\0" * 4096

        headers = {"content-type": "multipart/form-data; boundary=b"}
        _problem(limited.post("/api/v1/predict", content=chunks(), headers=headers), 413, "limit")


def test_a_patients_identity_is_never_returned_or_logged(client, phantom_pair, tmp_path, caplog) -> None:
    files = {}
    for plane, path in phantom_pair.items():
        pixels = np.asarray(Image.open(path).convert("L"))
        dicom_file(tmp_path / f"{plane}.dcm", pixels, spacing=0.15, patient=PATIENT)
        files[plane] = (f"{PATIENT['PatientID']}_{plane}.dcm", (tmp_path / f"{plane}.dcm").read_bytes())
    with caplog.at_level(logging.DEBUG):
        api = client.post("/api/v1/predict", files=files, headers={"x-request-id": "case-1"})
        page = client.post("/ui/case", files=files)
        bad = client.post("/api/v1/predict", files={"tv": files["tv"]}, data={"ga_weeks": "x"})
    assert api.status_code == 200 and page.status_code == 200 and bad.status_code == 422
    assert api.json()["inputs"]["tv"]["kind"] == "dicom" and api.headers["x-request-id"] == "case-1"
    downloads = [base64.b64decode(m) for m in re.findall(r'href="data:[^;"]+;base64,([^"]+)"', page.text)]
    assert len(downloads) == 3  # JSON, report, SR
    sr = pydicom.dcmread(io.BytesIO(downloads[-1]))
    assert sr.Modality == "SR" and str(sr.PatientName) == "" and sr.PatientID == ""
    seen = [api.text, page.text, bad.text, caplog.text, *(d.decode("latin-1") for d in downloads)]
    for secret in (*PATIENT.values(), "Quixote", "Dulcinea"):
        assert not any(secret in text for text in seen), secret


def test_the_page_loads_nothing_from_outside_and_labels_its_controls(client, phantom_pair) -> None:
    for route in ("/", "/batch"):
        page = client.get(route)
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
        for control in re.findall(r'<input id="([^"]+)"', page.text):
            assert f'<label for="{control}"' in page.text, control
    assert client.get("/static/style.css").status_code == 200
    panel = client.post("/ui/case", files=_files(phantom_pair), data={"spacing_mm": "0.15", "ga_weeks": "22"})
    assert panel.status_code == 200
    assert panel.text.count('<img class="overlay"') == 2 and 'id="attributions"' in panel.text
    assert len(re.findall(r"<tr class=\"(found|missing)\">", panel.text)) == 6
    assert 'id="measurements"' in panel.text and "not for clinical use" in panel.text
    assert "No DICOM SR: an SR needs a DICOM TV image" in panel.text
    assert "seen stretched by stage 1" not in panel.text


def test_the_page_says_when_stage_1_saw_an_image_stretched(client, phantom_pair, tmp_path) -> None:
    from PIL import Image

    grey = np.asarray(Image.open(phantom_pair["tv"]).convert("L")).astype(np.float32)
    dark = tmp_path / "dark_tv.png"
    Image.fromarray((grey * 0.25).astype(np.uint8)).save(dark)
    panel = client.post("/ui/case", files=_files({"tv": dark, "tc": phantom_pair["tc"]}))
    assert panel.status_code == 200
    assert panel.text.count("seen stretched by stage 1") == 1  # the TV image, not the TC one


def test_the_access_log_is_one_structured_line_per_request(client, phantom_pair, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="neurosono.serve.access"):
        client.post("/api/v1/predict?patient=Nobody", files=_files(phantom_pair))
        client.get("/api/v1/healthz")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "neurosono.serve.access"]
    assert [(entry["route"], entry["status"]) for entry in lines] == [
        ("/api/v1/predict", 200),
        ("/api/v1/healthz", 200),
    ]
    assert set(lines[0]) == {"request_id", "method", "route", "status", "ms"} and lines[0]["ms"] > 0
    assert "Nobody" not in caplog.text and phantom_pair["tv"].name not in caplog.text


def test_the_token_guards_the_api_off_loopback(engine, tmp_path) -> None:
    with pytest.raises(ValueError, match="--token-file"):
        check_settings(ServeSettings(host="0.0.0.0"))
    check_settings(ServeSettings(host="::1"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_token(token_file)
    token_file.chmod(0o600)
    assert read_token(token_file) == TOKEN
    guarded = ServeSettings(host="0.0.0.0", token=TOKEN)
    check_settings(guarded)
    with TestClient(create_app(guarded, engine)) as remote:
        body = _problem(remote.get("/api/v1/models"), 401, "Bearer")
        assert body["status"] == 401
        _problem(remote.get("/api/v1/models", headers={"authorization": "Bearer wrong"}), 401)
        assert remote.get("/api/v1/models", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert remote.get("/api/v1/healthz").status_code == 200
        assert 'id="token"' in remote.get("/").text
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token-file" in result.output


class _SlowPipeline:
    """Stands in for a pipeline to exercise the queue: holds its worker until released."""

    def __init__(self) -> None:
        self.model_info = {"notice": "test"}
        self.meta = {"regions": [], "threshold": 0.5}
        self.detector = SimpleNamespace(regions=[])
        self.head_model = None


def test_a_full_queue_is_503_and_a_slow_case_504() -> None:
    engine = Engine([_SlowPipeline()], queue_size=1, timeout_s=1.0)
    release = threading.Event()

    async def scenario():
        first = asyncio.ensure_future(engine.run(lambda p: release.wait(5) and "first"))
        second = asyncio.ensure_future(engine.run(lambda p: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(ProblemError) as busy:  # one working, one waiting: full
            await engine.run(lambda p: "third")
        assert busy.value.status == 503 and int(busy.value.headers["Retry-After"]) > 0
        release.set()
        assert (await first, await second) == ("first", "second")
        release.clear()
        with pytest.raises(ProblemError) as slow:  # past the timeout, waiting included
            await engine.run(lambda p: release.wait(5))
        assert slow.value.status == 504 and engine.pending == 1  # the work is still in hand
        release.set()
        await asyncio.sleep(0.1)
        assert engine.pending == 0

    asyncio.run(scenario())
    engine.close()


@pytest.mark.slow
def test_serve_stops_cleanly_on_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "neurosono", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    import httpx

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the server did not become ready")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    # uvicorn stops gracefully, then ends by the signal it caught, as a daemon should.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "models_ready" in output and "Application shutdown complete" in output
