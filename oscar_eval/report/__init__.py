"""Reports: HTML and Markdown renderings of the results store next to the paper's tables.

>>> from oscar_eval.report import render_report
>>> render_report("results", "reports/latest")  # doctest: +SKIP
"""

from oscar_eval.report.render import DEFAULT_TITLE, Rendered, ReportError, build_report, render_report
from oscar_eval.report.store import load_store

__all__ = ["DEFAULT_TITLE", "Rendered", "ReportError", "build_report", "load_store", "render_report"]
