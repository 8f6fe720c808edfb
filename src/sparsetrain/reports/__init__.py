"""Reports built from run directories (files only; no torch)."""

from .run_report import COLUMNS, RunRecord, load_run, markdown_table, method_row, render_markdown, write_report

__all__ = ["COLUMNS", "RunRecord", "load_run", "markdown_table", "method_row", "render_markdown", "write_report"]
