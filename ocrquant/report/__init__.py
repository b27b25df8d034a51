"""Reports: the float-vs-INT8 table as markdown, JSON and a terminal table."""

from ocrquant.report.table import COLUMNS, ReportRow, machine_description, render_markdown, row_cells

__all__ = ["COLUMNS", "ReportRow", "machine_description", "render_markdown", "row_cells"]
