"""The CLI's command table (``cli.main.COMMANDS``) names every command exactly once, with the module that
registers it: a command the table misses would only appear in ``--help``, one it misnames would fail."""

from __future__ import annotations

import importlib

import typer

from ocrquant.cli.main import COMMANDS


def test_command_table_matches_what_each_module_registers() -> None:
    for module in set(COMMANDS.values()):
        app = typer.Typer()
        importlib.import_module(f"ocrquant.cli.{module}").register(app)
        names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
        assert names == {name for name, owner in COMMANDS.items() if owner == module}, module


def test_a_command_loads_only_its_own_module() -> None:
    """``ocrquant eval ...`` in a fresh interpreter imports neither the quantizer's search nor matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys; from ocrquant.cli.main import register_commands; register_commands(['eval', '--help']);"
        "print(sorted(m for m in ('ocrquant.tuning.method_search', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
