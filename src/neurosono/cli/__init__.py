"""Command line: a thin layer over the stages (``neurosono --help``); one module per command group.

Exit codes: 0 success; 1 the data failed validation; 2 bad input or arguments;
3 the output exists or cannot be written; 4 a batch finished but some cases failed.
"""

from __future__ import annotations

import typer

from neurosono import __version__
from neurosono.cli import (
    classify,
    data,
    detect,
    evaluate,
    export,
    measure,
    phantom,
    predict,
    real,
    realism,
    run,
    serve,
)
from neurosono.cli.common import out

app = typer.Typer(
    name="neurosono",
    help="Two-stage fetal neurosonography screening on TV/TC planes (research use only).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
def version() -> None:
    """Print the neurosono version."""
    out.print(f"neurosono {__version__}")


app.command()(phantom.synth)
app.add_typer(data.app, name="data")
app.add_typer(detect.app, name="detect")
app.add_typer(classify.app, name="classify")
app.command("eval")(evaluate.evaluate)
app.command("evaluate", hidden=True)(evaluate.evaluate)  # older spelling of 'eval'
app.command()(predict.predict)
app.command("export")(export.export)
app.add_typer(measure.app, name="measure")
app.command()(realism.realism)
app.command()(run.run)
app.command()(serve.serve)
app.add_typer(real.app, name="real", hidden=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
