"""``neurosono serve``: the web page and REST API on uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import EXIT_BAD_INPUT, Runtime, fail, out


def serve(
    host: Annotated[str, typer.Option(help="address to listen on; off loopback it needs --token-file")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    model: Annotated[
        Path | None, typer.Option(help="model folder (onnx: a 'neurosono export' folder) [default: shipped]")
    ] = None,
    runtime: Annotated[
        Runtime,
        typer.Option(
            help="onnx (onnxruntime: about twice torch's throughput here), int8 (an int8 export), "
            "openvino (an export compiled by OpenVINO) or torch"
        ),
    ] = Runtime.onnx,
    workers: Annotated[int, typer.Option(help="cases worked on at once (each loads its own models)")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body; 413 above it")] = 50.0,
    token_file: Annotated[
        Path | None, typer.Option(help="file holding the API's bearer token (chmod 600)")
    ] = None,
    queue: Annotated[int, typer.Option(help="requests that may wait for a worker; 503 beyond")] = 16,
    timeout: Annotated[float, typer.Option(help="seconds a request may take, waiting included")] = 60.0,
    max_pixels: Annotated[int, typer.Option(help="largest image, checked from its header")] = 50_000_000,
) -> None:
    """The clinic's web page (one case, batch) and the REST API /api/v1, with FastAPI on uvicorn."""
    from neurosono.serve.server import run_server
    from neurosono.serve.settings import ServeSettings, check_settings, read_token

    try:
        token = read_token(token_file) if token_file is not None else None
        settings = ServeSettings(
            host=host,
            port=port,
            model=model,
            runtime=runtime.value,
            workers=workers,
            max_upload_mb=max_upload_mb,
            token=token,
            queue=queue,
            timeout_s=timeout,
            max_pixels=max_pixels,
        )
        check_settings(settings)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    shown = f"[{host}]" if ":" in host else host
    access = "the API needs its token" if token else "loopback only"
    out.print(
        f"neurosono serve: http://{shown}:{port}/ ({access}); models load now and "
        "/api/v1/readyz says when they are ready; Ctrl-C or SIGTERM stops it"
    )
    code = run_server(settings)
    if code:
        raise typer.Exit(code)
