"""The speed results file ``results/speed/<name>.json`` (docs/results.md); its ``env`` comes from
:func:`oscar_eval.provenance.environment`, the one provenance collector."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from oscar_eval.provenance import now

SCHEMA = 1
KIND = "speed"

#: Keys every ``env`` must carry (values may be null where not applicable, e.g. no GPU).
REQUIRED_ENV_KEYS = (
    "gpu",
    "driver",
    "clocks",
    "cuda",
    "torch",
    "transformers",
    "oscar_eval",
    "git_commit",
    "python",
    "platform",
)
#: Keys every row must carry.
REQUIRED_ROW_KEYS = (
    "level",
    "arch",
    "impl",
    "batch",
    "context",
    "num_q_heads",
    "num_kv_heads",
    "head_dim",
    "median_us",
    "min_us",
    "max_us",
    "bytes",
    "gbps",
    "roofline_fraction",
    "kv_bytes",
    "peak_mem_bytes",
)
REQUIRED_TOP_KEYS = ("schema", "kind", "name", "created", "env", "peak_bandwidth_gbps", "rows")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SpeedResultError(ValueError):
    pass


def make_document(name: str, env: dict[str, Any], peak_bandwidth_gbps: float | None, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc = {
        "schema": SCHEMA,
        "kind": KIND,
        "name": name,
        "created": now(),
        "env": env,
        "peak_bandwidth_gbps": peak_bandwidth_gbps,
        "rows": rows,
    }
    doc.update(extra)
    return doc


def validate(doc: Any) -> list[str]:
    """Problems with a speed document (empty when it satisfies docs/results.md)."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    for key in REQUIRED_TOP_KEYS:
        if key not in doc:
            problems.append(f"missing top-level key {key!r}")
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA}, got {doc.get('schema')!r}")
    if doc.get("kind") != KIND:
        problems.append(f"kind must be {KIND!r}, got {doc.get('kind')!r}")
    env = doc.get("env")
    if not isinstance(env, dict):
        problems.append("env must be an object")
    else:
        for key in REQUIRED_ENV_KEYS:
            if key not in env:
                problems.append(f"env is missing {key!r}")
    rows = doc.get("rows")
    if not isinstance(rows, list):
        problems.append("rows must be a list")
    else:
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                problems.append(f"rows[{i}] is not an object")
                continue
            missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
            if missing:
                problems.append(f"rows[{i}] ({row.get('impl')}) is missing {', '.join(missing)}")
    return problems


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise SpeedResultError(
            f"bad results name {name!r}: use letters, digits, '.', '_' and '-' (it becomes speed/<name>.json)"
        )
    return name


def speed_path(results_dir: str | Path, name: str) -> Path:
    return Path(results_dir) / "speed" / f"{check_name(name)}.json"


def write_speed(results_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Validate and write ``<results_dir>/speed/<name>.json`` atomically."""
    problems = validate(doc)
    if problems:
        raise SpeedResultError("speed document is invalid: " + "; ".join(problems))
    path = speed_path(results_dir, doc["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_speed(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpeedResultError(f"{path}: unreadable speed file ({exc})") from None
    problems = validate(doc)
    if problems:
        raise SpeedResultError(f"{path}: " + "; ".join(problems))
    return doc
