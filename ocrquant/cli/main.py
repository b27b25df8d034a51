"""The ``ocrquant`` command line: one subcommand per workflow step, each a thin layer over the API."""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Annotated

import typer

try:  # typer >= 0.24 carries its own click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from ocrquant.cli.common import (
    STATE,
    err_console,
    setup_logging,
)
from ocrquant.errors import OcrQuantError, describe_failure, one_line
from ocrquant.fileio import sweep_orphans

app = typer.Typer(
    help="OCR models from training framework to fast, accurate INT8, proven with OCR metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    STATE["debug"] = debug
    setup_logging(verbose)


#: Each workflow stage keeps its commands in its own module with ``register(app)``; this registry says
#: which module registers which top-level command, so a run imports only its command's module (and
#: that module's engine). All of them at start cost 0.9 s more per command than one of them
#: (``python -X importtime -c "import ocrquant.cli.main"`` before and after), paid by every call of a
#: script or test. ``--help`` and an unknown command load them all. ``tests/test_cli_registry.py``
#: checks the table against what the modules register.
COMMANDS: dict[str, str] = {
    "models": "models", "data": "models",
    "eval": "evaluate",
    "run": "run",
    "ocr": "ocr", "e2e": "ocr",
    "convert": "convert",
    "quantize": "quantize",
    "bench": "bench",
    "dump": "analysis", "compare": "analysis", "simulate": "analysis", "npy2bin": "analysis",
    "bin2npy": "analysis", "profile": "analysis",
    "sensitivity": "sensitivity",
    "ncnn": "ncnn",
}  # fmt: skip
_REGISTERED: set[str] = set()


def register_commands(argv: list[str] | None = None) -> typer.Typer:
    """``app`` with the command ``argv`` names registered (every command when ``argv`` is None, names
    none, or names one this table does not know: typer then lists them or says which is unknown)."""
    name = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    modules = [COMMANDS[name]] if name in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        if module not in _REGISTERED:
            importlib.import_module(f"ocrquant.cli.{module}").register(app)
            _REGISTERED.add(module)
    return app


_SIGNALLED: list[int] = []


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a job scheduler's stop, ``kill``) raised as KeyboardInterrupt, so the command unwinds as
    on Ctrl-C: every ``with`` block closes, temporary directories (``ocrquant-quant-*``, the budget
    search's models) are removed and per-image partial results stay for the resume. Without it Python
    dies on the signal at once and leaves its scratch directories in the temp folder."""
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point, the one error boundary of every command.

    What the user caused (:class:`OcrQuantError`, a bad option, an OS error on a path they named)
    becomes one ``error:`` line on stderr and exit code 2; Ctrl-C / SIGTERM exit 130 / 143 with a
    line saying partial results are kept; anything else is ocrquant's fault and still prints one line
    (exit 1) instead of a traceback, which ``--debug`` shows.
    """
    signal.signal(signal.SIGTERM, _terminated)
    sweep_orphans()  # scratch folders of killed runs
    try:
        code = register_commands(sys.argv[1:])(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except click_exc.ClickException as exc:  # usage: unknown option, value out of range, missing argument
        print(one_line(OcrQuantError(exc.format_message())), file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if STATE["debug"]:
            raise
        print(describe_failure(exc), file=sys.stderr)
        sys.exit(2 if isinstance(exc, OcrQuantError | OSError | MemoryError) else 1)
    if code == 130:  # typer turns a KeyboardInterrupt (Ctrl-C, or SIGTERM via _terminated) into 130
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> None:
    if _SIGNALLED:
        err_console.print("terminated (partial results kept; run again to resume)")
        sys.exit(143)
    err_console.print("interrupted (partial results kept; run again to resume)")
    sys.exit(130)


if __name__ == "__main__":
    main()
