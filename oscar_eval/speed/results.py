"""The speed results file ``results/speed/<name>.json`` (docs/results.md) and its provenance."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
_OPTIONAL_PACKAGES = ("triton", "flash_attn", "flashinfer", "flashinfer-python", "numpy")


class SpeedResultError(ValueError):
    pass


def _run(cmd: list[str], cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def source_digest(root: Path | None = None) -> str:
    """sha256 over the package sources (oscar_core, oscar_eval, csrc): identifies uncommitted code."""
    root = root or repo_root()
    h = hashlib.sha256()
    for sub in ("oscar_core", "oscar_eval", "csrc"):
        base = root / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".cu", ".cuh", ".cpp", ".h", ".json", ".yaml"):
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def git_info(root: Path | None = None) -> dict[str, Any]:
    root = root or repo_root()
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    dirty = None
    if commit:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
        dirty = bool(status)
    return {"git_commit": commit, "git_dirty": dirty, "source_sha256": source_digest(root)}


def gpu_info() -> dict[str, Any]:
    """GPU name, driver and clocks at this moment (nvidia-smi), or nulls without a GPU."""
    info: dict[str, Any] = {"gpu": None, "driver": None, "clocks": None, "gpu_memory_bytes": None, "sm_count": None}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_bytes"] = int(props.total_memory)
            info["sm_count"] = int(props.multi_processor_count)
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["l2_bytes"] = int(getattr(props, "L2_cache_size", 0)) or None
    except Exception:  # provenance is best effort
        pass
    q = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,temperature.gpu,pstate",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
        ]
    )
    if q:
        parts = [p.strip() for p in q.splitlines()[0].split(",")]
        if len(parts) >= 9:
            info["gpu"] = info["gpu"] or parts[0]
            info["driver"] = parts[1]

            def num(x: str) -> float | None:
                try:
                    return float(x)
                except ValueError:
                    return None

            info["clocks"] = {
                "sm_mhz": num(parts[2]),
                "mem_mhz": num(parts[3]),
                "max_sm_mhz": num(parts[4]),
                "max_mem_mhz": num(parts[5]),
                "power_w": num(parts[6]),
                "temp_c": num(parts[7]),
                "pstate": parts[8],
            }
    return info


def collect_env() -> dict[str, Any]:
    import oscar_eval

    env: dict[str, Any] = {}
    env.update(gpu_info())
    try:
        import torch

        env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        env["torch_cuda_build"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        env["torch"] = torch.__version__
    except Exception:
        env["cuda"] = env["torch"] = None
    env["transformers"] = _version("transformers")
    env["oscar_eval"] = oscar_eval.__version__
    try:
        import oscar_core

        env["oscar_core"] = oscar_core.__version__
    except Exception:
        env["oscar_core"] = None
    env["packages"] = {name: _version(name) for name in _OPTIONAL_PACKAGES}
    env.update(git_info())
    env["python"] = platform.python_version()
    env["platform"] = platform.platform()
    env["argv"] = list(sys.argv)
    env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def make_document(name: str, env: dict[str, Any], peak_bandwidth_gbps: float | None, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc = {
        "schema": SCHEMA,
        "kind": KIND,
        "name": name,
        "created": now_iso(),
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
