"""The self-contained HTML report: one file, Jinja2 with autoescaping, images as data URIs, no
scripts (a Content-Security-Policy forbids them and any external resource)."""

from __future__ import annotations

import base64

import jinja2

from oscar_eval.report import fmt
from oscar_eval.report.model import Figure, Report, Table, TextTable, slug


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("oscar_eval", "templates"),
        autoescape=True,  # every file-derived string is hostile until escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters |= {"value": fmt.value, "diff": fmt.diff, "diff_class": fmt.diff_class, "slug": slug,
                    "b64": lambda data: base64.b64encode(data).decode("ascii")}
    env.tests |= {"table": lambda b: isinstance(b, Table), "text_table": lambda b: isinstance(b, TextTable),
                  "figure": lambda b: isinstance(b, Figure)}
    return env


def render(report: Report) -> str:
    return environment().get_template("report.html.j2").render(report=report, missing=fmt.MISSING)
