"""The command reference (docs/cli.md), generated from the command line itself.

``python -m neurosono.cli.reference > docs/cli.md`` (``make docs``); a test checks the file is
current. Hidden commands and options (older spellings) are left out.
"""

from __future__ import annotations

import enum
import inspect
import typing

import typer.main

from neurosono.cli import app

HEADER = """# Command reference

Generated from the command line itself (`make docs`); `neurosono COMMAND --help` prints the
same. Exit codes: 0 success; 1 the data failed validation; 2 bad input or arguments; 3 the
output exists or cannot be written; 4 a batch finished but some cases failed.
"""


def _choices(param) -> list[str]:
    """The values of a parameter whose type is a choice (an Enum, or a list of one)."""
    annotation = param.type_descriptor.annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return [str(m.value) for m in candidate]
    return []


def _param_line(param) -> str:
    option = param.param_type_name == "option"
    names = " / ".join(param.opts + param.secondary_opts) if option else (param.metavar or param.name.upper())
    choices = _choices(param)
    shown_choices = f" `{'|'.join(choices)}`" if choices else ""
    help_text = " ".join((param.help or "").split())
    default = getattr(param.default, "value", param.default)
    shown_default = ""
    unset = default is None or default is False or default in ((), [])
    if option and not param.required and not unset and "[default" not in help_text:
        shown_default = f" [default: {default}]"
    required = " (required)" if param.required else ""
    return f"- `{names}`{shown_choices}{required}: {help_text}{shown_default}".rstrip().rstrip(":")


def _command(path: str, command) -> list[str]:
    lines = [f"## `{path}`", ""]
    doc = inspect.cleandoc(command.help or "")
    lines += [doc, ""] if doc else []
    params = [p for p in command.params if not getattr(p, "hidden", False) and p.name != "help"]
    lines += [_param_line(p) for p in params]
    return [*lines, ""] if params else lines


def render() -> str:
    """docs/cli.md: every visible command, its arguments and options, with their choices and defaults."""
    root = typer.main.get_command(app)
    lines = [HEADER]

    def walk(path: str, command) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            lines.extend(_command(path, command))
            return
        if path != "neurosono":
            lines.extend([f"## `{path}`", "", inspect.cleandoc(command.help or ""), ""])
        for name, sub in subcommands.items():
            if not getattr(sub, "hidden", False):
                walk(f"{path} {name}", sub)

    walk("neurosono", root)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
