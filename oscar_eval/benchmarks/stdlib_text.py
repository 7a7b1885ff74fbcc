"""Real English text every Python installation has: the standard library's docstrings, read from source.

Read with ``ast`` from the source files, not from the imported modules: libraries patch the standard
library at run time (transformers adds ``logging.Logger.warning_advice``, others replace
``inspect.getfile``), which would make the text depend on what else was imported; the source does not
(and ``python -OO`` does not strip it). Used for perplexity documents, RULER's and NIAH's fallback
haystacks; provenance always says the text is this, not the benchmark's official data.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from oscar_eval.errors import UserError

# Standard-library modules whose docstrings make the fallback haystacks (fixed, sorted order).
PROSE_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest",
    "email", "enum", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq",
    "hmac", "html", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "traceback", "turtle", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)


def module_file(name: str) -> Path:
    """The source file of a standard-library module, found without importing it."""
    spec = importlib.util.find_spec(name)
    origin = getattr(spec, "origin", None)
    if spec is None or not origin or not origin.endswith(".py") or not Path(origin).is_file():
        raise UserError(f"standard-library module {name} has no Python source file here")
    return Path(origin).resolve()


def module_text(name: str) -> str:
    """A module's docstrings: its own, then each public class (followed by its public methods') and
    function defined at its top level, sorted by name, joined by blank lines."""
    tree = ast.parse(module_file(name).read_bytes())
    parts = [ast.get_docstring(tree)]
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in sorted((n for n in tree.body if isinstance(n, defs) and not n.name.startswith("_")),
                       key=lambda n: n.name):
        parts.append(ast.get_docstring(node))
        if isinstance(node, ast.ClassDef):
            methods = [m for m in node.body if isinstance(m, defs[:2]) and not m.name.startswith("_")]
            parts += [ast.get_docstring(m) for m in sorted(methods, key=lambda m: m.name)]
    return "\n\n".join(p for p in parts if p)


def prose_paragraphs(modules: Sequence[str]) -> str:
    """Prose paragraphs (>= 8 words, ending in '.', no doctest or indented code) of the modules'
    docstrings, de-duplicated, in module order; modules without a source file here are skipped."""
    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in modules:
        try:
            text = module_text(name)
        except UserError:  # e.g. a Python built without sqlite3 or tkinter (turtle)
            continue
        for para in re.split(r"\n\s*\n", text):
            flat = " ".join(para.split())
            if (len(flat.split()) >= 8 and flat.endswith(".") and ">>>" not in para
                    and not re.search(r"^\s{2,}\S", para, re.M) and flat not in seen):
                seen.add(flat)
                paragraphs.append(flat)
    return "\n\n".join(paragraphs)


def stdlib_haystack_file(folder: Path) -> Path:
    """``prose_paragraphs(PROSE_MODULES)`` written once to ``folder`` (named by Python version and hash)."""
    import hashlib
    import platform

    text = prose_paragraphs(PROSE_MODULES)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    path = Path(folder) / f"stdlib-docstrings-py{platform.python_version()}-{digest}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path
