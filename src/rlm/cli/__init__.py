"""The ``rlm`` command line: the click group, the error -> exit-code mapping and ``main``.

Commands live in ``run.py`` (``rlm run``), ``batch.py`` (``rlm batch``), ``bench.py``,
``demo.py``, ``listing.py`` (``rlm backends``, ``rlm envs``), ``trace.py`` (``rlm trace
show|view|html``, ``rlm replay``) and ``models.py`` (``rlm models``); ``backend_flags.py``
turns the backend flags they share into backend arguments.  Every ``RLMError`` is caught
once, here, and printed as one ``Error: ...`` line on stderr with the exception's
``exit_code`` (2 for configuration errors, 3 for limits, 1 otherwise).  ``RLM_DEBUG=1``
re-raises unexpected exceptions.
"""

from __future__ import annotations

import os
from typing import Any

import click

import rlm
from rlm.cli.batch import batch
from rlm.cli.bench import bench
from rlm.cli.demo import demo
from rlm.cli.listing import backends, envs
from rlm.cli.mcp import mcp
from rlm.cli.models import models
from rlm.cli.run import run
from rlm.cli.serve import serve
from rlm.cli.trace import replay, trace
from rlm.errors import RLMError

__all__ = ["cli", "main"]


def _debug() -> bool:
    return os.environ.get("RLM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class CLIError(click.ClickException):
    """An error shown as one ``Error: <message>`` line, exiting with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    """A group that maps errors to one line and an exit code (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RLMError as exc:
            raise CLIError(_one_line(exc) or type(exc).__name__, exc.exit_code) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Aborted!", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            if _debug():
                raise
            raise CLIError(
                f"unexpected {type(exc).__name__}: {_one_line(exc)} "
                "(set RLM_DEBUG=1 to see the traceback)"
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rlm.__version__, prog_name="rlm")
def cli() -> None:
    """Recursive Language Models: answer questions over inputs of any size."""


for _command in (run, batch, bench, demo, backends, envs, trace, replay, serve, mcp, models):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """The ``rlm`` console script (exits the process with the command's status)."""
    cli.main(args=argv, prog_name="rlm")
