"""Reports built from run directories (files only; no torch)."""

from .run_report import (
    RunRecord,
    load_run,
    markdown_table,
    method_row,
    render_markdown,
    result_columns,
    write_report,
)

__all__ = ["RunRecord", "load_run", "markdown_table", "method_row", "render_markdown", "result_columns", "write_report"]
