"""Reports: the float-vs-INT8 table as markdown, JSON and a terminal table."""

from ocrquant.report.table import (
    CHAIN_COLUMNS,
    COLUMNS,
    ReportRow,
    chain_cells,
    machine_description,
    render_markdown,
    row_cells,
)

__all__ = [
    "CHAIN_COLUMNS",
    "COLUMNS",
    "chain_cells",
    "ReportRow",
    "machine_description",
    "render_markdown",
    "row_cells",
]
