"""Helpers of the report tests: fixture results stores in the docs/results.md format, a headless-Chromium
page loader, and readers of the rendered tables. (Not named conftest: test modules import it by name.)"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import oscar_core

LB_SUBSETS = [
    "qasper_e", "multifieldqa_en_e", "hotpotqa_e", "2wikimqa_e", "gov_report_e", "multi_news_e", "trec_e",
    "triviaqa_e", "samsum_e", "passage_count_e", "passage_retrieval_en_e", "lcc_e", "repobench-p_e",
]  # fmt: skip
OCR_GROUPS = {"Text Recognition": 300, "Scene Text-centric VQA": 200, "Doc-oriented VQA": 200,
              "Key Information Extraction": 200, "Handwritten Mathematical Expression Recognition": 100}
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>|x'


class StoreWriter:
    """Writes runs and speed files exactly as docs/results.md describes them."""

    def __init__(self, root: Path):
        self.root = root
        (root / "runs").mkdir(parents=True, exist_ok=True)

    def run(self, benchmark: str, model: str, method: str, *, average: float | None = None,
            columns: dict[str, float] | None = None, bits: float | None = 3.02, protocol: str = "paper",
            created: str = "2026-11-29T08:00:00+00:00", records: list[dict[str, Any]] | None = None,
            extra: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
            manifest_extra: dict[str, Any] | None = None) -> str:
        settings = {"max_input_len": 32768, "chat_template": False, "seed": 42, "greedy": True, "protocol": protocol}
        digest = hashlib.sha256(json.dumps([settings, created, params], sort_keys=True).encode()).hexdigest()[:8]
        run_id = f"{benchmark}-{model}-{method}-{digest}".replace("/", "_")
        folder = self.root / "runs" / hashlib.sha256(run_id.encode()).hexdigest()[:16]
        folder.mkdir(parents=True)
        manifest = {
            "schema": 1, "run_id": run_id, "benchmark": benchmark, "subsets": [],
            "model": {"label": model, "path": f"/models/{model}", "revision": "abc123", "architecture": "X",
                      "dtype": "bfloat16"},
            "method": {"name": method, "params": params or default_params(method), "bits_per_element": bits},
            "settings": settings,
            "data": {"dir": "/data", "files": {f"{benchmark}.jsonl": "f" * 64}},
            "env": {"oscar_eval": "0.1.0", "git_commit": "deadbeef", "python": "3.11.7", "torch": "2.13.0",
                    "transformers": "5.24.0", "cuda": "13.0", "gpu": "NVIDIA H200", "platform": "Linux-test"},
            "created": created,
        }
        for key, value in (manifest_extra or {}).items():  # "model" is merged, everything else replaced
            manifest[key] = manifest[key] | value if key == "model" else value
        records = records or []
        summary: dict[str, Any] = {
            "schema": 1, "run_id": run_id, "benchmark": benchmark, "model_label": model, "method": method,
            "bits_per_element": bits, "n_items": max(len(records), 650),
            "n_failed": sum(r.get("status") == "failed" for r in records), "protocol": protocol,
        }
        if benchmark == "longbench_e":
            # Every dataset's mean equals the average, so the average is exactly ``average``.
            summary["subsets"] = {s: {"0-4k": average + 1, "4-8k": average, "8k+": average - 1, "mean": average,
                                      "n": 50} for s in LB_SUBSETS}
            summary["average"] = average
        else:
            if average is not None:
                summary["average"] = average
            summary["columns"] = columns or {}
        summary |= extra or {}
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        with (folder / "records.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        return run_id

    def speed(self, name: str, rows: list[dict[str, Any]], gpu: str = "NVIDIA H200", note: str | None = None) -> None:
        (self.root / "speed").mkdir(exist_ok=True)
        env = {"gpu": gpu, "driver": "580.1", "clocks": {"sm_mhz": 1980, "mem_mhz": 3201}, "cuda": "13.0",
               "torch": "2.11.0", "transformers": "5.17.0", "oscar_eval": "0.1.0", "git_commit": "deadbeef"}
        data = {"schema": 1, "kind": "speed", "env": env, "peak_bandwidth_gbps": 4300.0, "rows": rows}
        if note is not None:
            data["note"] = note
        (self.root / "speed" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


    def kernels(self, name: str, rows: list[dict[str, Any]], date: str, note: str = "") -> None:
        """A kernels/<name>.json as scripts/bench_kernels.py writes it (the fields the report reads)."""
        (self.root / "kernels").mkdir(exist_ok=True)
        env = {"gpu": "NVIDIA H200", "date": date, "git_commit": "f119f54", "kernel_defines": "", "cuda": "13.0"}
        data = {"schema": 1, "kind": "kernels", "env": env, "peak_bandwidth_gbps": 4270.0, "rows": rows,
                "note": note}
        (self.root / "kernels" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def record(subset: str, index: int, *, failed: bool = False, error: str = "CUDA out of memory",
           prediction: str = "an answer", score: float = 0.5) -> dict[str, Any]:
    return {"item_id": f"{subset}/{index:04x}", "subset": subset, "index": index, "length": 5000,
            "status": "failed" if failed else "ok", "error": error if failed else None, "prompt_sha256": "0" * 64,
            "input_tokens": 5400, "truncated": False, "prediction": None if failed else prediction,
            "references": ["ref"], "score": None if failed else score, "new_tokens": 17, "seconds": 3.1}


def speed_row(impl: str, batch: int, context: int, median_us: float, kv_bytes: int = 0,
              level: str = "kernel") -> dict[str, Any]:
    return {"level": level, "arch": "qwen3-8b", "impl": impl, "batch": batch, "context": context,
            "num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128, "median_us": median_us,
            "min_us": median_us * 0.98, "max_us": median_us * 1.05, "bytes": 0, "gbps": 3900.0 if impl.startswith(
                "bf16") else 3500.0, "roofline_fraction": 0.9, "kv_bytes": kv_bytes, "peak_mem_bytes": 0}


def full_store(root: Path) -> StoreWriter:
    """A store covering every section: Table 1 (partial), lm-eval, Table 6, Table 8, NIAH, speed."""
    w = StoreWriter(root)
    # Table 1: Llama under a longer HF label (matched to "Llama-3.1-8B"), Qwen3-8B with two methods only.
    w.run("longbench_e", "meta-llama/Meta-Llama-3.1-8B-Instruct", "fp16", average=41.50, bits=16.0)
    w.run("longbench_e", "meta-llama/Meta-Llama-3.1-8B-Instruct", "kivi", average=39.00, bits=3.25)
    w.run("longbench_e", "meta-llama/Meta-Llama-3.1-8B-Instruct", "oscar", average=41.20, bits=3.02,
          records=[record("qasper_e", 0), record("qasper_e", 1, failed=True,
                                                  error="torch.OutOfMemoryError: CUDA out of memory")])
    w.run("longbench_e", "Qwen3-8B", "fp16", average=49.00, bits=16.0)
    w.run("longbench_e", "Qwen3-8B", "oscar", average=48.74, bits=3.02)
    w.run("longbench_e", "Qwen3-8B", "mymethod", average=45.00, bits=2.5)
    # Same cell under lm-eval's protocol: must stay out of Table 1.
    w.run("longbench_e", "meta-llama/Meta-Llama-3.1-8B-Instruct", "oscar", average=30.00, protocol="lm-eval")
    w.run("ocrbench", "Qwen3-VL-8B-Instruct", "oscar", bits=3.02,
          columns={**{g: n * 0.85 for g, n in OCR_GROUPS.items()}, "Total": 850})
    w.run("mmau_pro", "Qwen3-Omni-30B-A3B-Instruct", "oscar", bits=3.02,
          columns={"Open-ended": 67.0, "Good Rate": 30.0, "AIF": 88.0})
    grid = {str(c): {str(d): 100.0 if (c + d) % 3 else 80.0 for d in range(0, 101, 10)}
            for c in (4096, 8192, 16384, 32768, 43008)}
    w.run("niah", "Qwen3-8B", "oscar", average=96.0, extra={"grid": grid})
    rows = []
    for ctx, bf16, oscar in ((4096, 17.2, 12.0), (32768, 50.0, 14.0), (131072, 139.9, 35.0)):  # 128K: 4.00x
        rows.append(speed_row("bf16-cudnn", 1, ctx, bf16, kv_bytes=ctx * 512 * 8))
        rows.append(speed_row("oscar-int2", 1, ctx, oscar, kv_bytes=ctx * 97 * 8))
    for batch in (8, 48):
        rows.append(speed_row("bf16-cudnn", batch, 4096, 4.3 * batch))
        rows.append(speed_row("oscar-int2", batch, 4096, 1.2 * batch))
    w.speed("h200-kernels", rows)
    return w


def hostile_store(writer: StoreWriter) -> None:
    """Hostile text in every field a report shows: model, method, benchmark, protocol, errors, impl."""
    label = f"{HOSTILE} $\\frac{{1$"  # also an unbalanced mathtext expression for the plots
    writer.run("longbench_e", label, "oscar", average=40.0, bits=3.0,
               records=[record("qasper_e", 0, failed=True, error=HOSTILE, prediction=HOSTILE)])
    writer.run("longbench_e", label, HOSTILE, average=39.0, bits=2.0)
    writer.run(HOSTILE, "Qwen3-8B", "oscar", average=1.0, protocol=HOSTILE)
    writer.speed("s", [speed_row(HOSTILE, 1, 4096, 20.0, kv_bytes=100), speed_row("oscar-int2", 1, 4096, 10.0)],
                 note=HOSTILE)


# --- headless Chromium over the DevTools protocol (--remote-debugging-pipe: stdlib only) -----------

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


@dataclass
class PageResult:
    console: list[str]  # console errors/warnings, uncaught exceptions, failed loads, CSP violations
    requests: list[str]  # every URL the page asked for
    checks: dict[str, Any]  # results of the JavaScript checks run after load
    screenshot: bytes


class Chromium:
    """One headless browser; ``load`` opens a page in a fresh tab and reports what happened."""

    def __init__(self, binary: str, profile: Path):
        # Chromium reads commands on fd 3 and writes replies on fd 4; move our pipe ends there.
        self._cmd_r, self._cmd_w = os.pipe()
        self._res_r, self._res_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (self._cmd_r, self._res_w)]

        def child_fds() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (*high, self._cmd_r, self._res_w):
            os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._res_r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._res_r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline)
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, session: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == name and e.get("sessionId") == session for e in self.events):
            self.events.append(self._next(deadline))

    def print_pdf(self, url: str) -> tuple[bytes, list[str]]:
        """The page printed (print media CSS applies) and the problems seen while printing."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=s)
        self.call("Page.navigate", {"url": url}, session=s)
        self.wait_event("Page.loadEventFired", s)
        pdf = self.call("Page.printToPDF", {"printBackground": True}, session=s, timeout=120)["data"]
        mine = [e for e in self.events if e.get("sessionId") == s]
        self.call("Target.closeTarget", {"targetId": target})
        return base64.b64decode(pdf), _problems(mine)

    def load(self, url: str, width: int, height: int, mobile: bool = False, full_page: bool = False) -> PageResult:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=s)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "mobile": mobile,
                                                         "deviceScaleFactor": 2 if mobile else 1}, session=s)
        self.call("Page.navigate", {"url": url}, session=s)
        self.wait_event("Page.loadEventFired", s)
        checks = self.call("Runtime.evaluate", {"expression": PAGE_CHECKS, "returnByValue": True},
                           session=s)["result"]["value"]
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=s)["cssContentSize"]
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}
        shot = self.call("Page.captureScreenshot", params, session=s)["data"]
        time.sleep(0.2)
        self.call("Runtime.evaluate", {"expression": "1"}, session=s)  # drain late events
        mine = [e for e in self.events if e.get("sessionId") == s]
        self.call("Target.closeTarget", {"targetId": target})
        return PageResult(_problems(mine), [e["params"]["request"]["url"] for e in mine
                                            if e.get("method") == "Network.requestWillBeSent"],
                          checks, base64.b64decode(shot))

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._res_r):
            os.close(fd)


# Run in the page after load: images decoded, layout not wider than the viewport, no scripts.
PAGE_CHECKS = """(() => ({
  images: document.images.length,
  brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length,
  scripts: document.scripts.length,
  pageWidth: document.documentElement.scrollWidth,
  viewportWidth: window.innerWidth,
  tables: document.querySelectorAll('table').length,
  title: document.title,
}))()"""


def _problems(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            out.append(f"uncaught: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails']['text']}")
        elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            out.append(f"log {p['entry']['level']} ({p['entry']['source']}): {p['entry']['text']}")
        elif method == "Network.loadingFailed":
            out.append(f"failed load: {p.get('errorText')}")
    return out


# --- reading the rendered report back -------------------------------------------------------------


class _Tables(HTMLParser):
    """Every <table id=...> as rows of cell texts (th and td, whitespace collapsed)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id") or f"t{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def html_row(html: str, table_id: str, label: str) -> list[str]:
    rows = [r for r in html_tables(html)[table_id] if r and r[0] == label]
    assert len(rows) == 1, f"row {label!r} in table {table_id}: {rows}"
    return rows[0]


def md_table(md: str, title: str) -> list[list[str]]:
    """The Markdown table under the line ``**title**``, split on unescaped pipes."""
    lines = md.splitlines()
    start = lines.index(f"**{title}**") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def md_row(md: str, title: str, label: str) -> list[str]:
    rows = [r for r in md_table(md, title) if r[0] == label]
    assert len(rows) == 1, f"row {label!r} under {title!r}: {rows}"
    return rows[0]


def default_params(method: str) -> dict[str, Any]:
    """The method's own defaults (what a run made without --set records), else a generic INT2 config."""
    try:
        return oscar_core.get_method(method).to_dict()["params"]
    except ValueError:
        return {"bits": 2, "group_size": 32}


# --- a store with every kind of run the report must label (issue 17) ----------------------------

GGUF_SOURCE = {"format": "gguf-dequantized", "quantization": "Q4_1", "checkpoint": "smollm2-135m-instruct",
               "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def e2e_row(impl: str, batch: int, context: int, median_us: float, kv_bytes: int, arch: str = "qwen3-8b"
            ) -> dict[str, Any]:
    return speed_row(impl, batch, context, median_us, kv_bytes, level="e2e") | {
        "arch": arch, "peak_mem_bytes": 17 * 2**30 + kv_bytes}


def labelled_store(root: Path) -> StoreWriter:
    """Smoke, partial and complete runs; a GGUF-derived real checkpoint with RULER, NIAH and PPL runs
    whose manifests record the decode path; end-to-end speed runs (an older one superseded by a
    newer one) with both baseline styles; two kernel files (the newer one wins each shape)."""
    w = full_store(root)
    smoke = {"configuration": "smoke", "model": {"label": "smoke-tiny-llama"}}
    w.run("longbench_e", "smoke-tiny-llama", "oscar", average=3.0, manifest_extra=smoke)
    w.run("longbench_e", "Qwen3-8B", "kivi", average=47.0,
          extra={"coverage": {"done": 37, "total": 220, "missing_subsets": [], "complete": False}})
    real = "smollm2-135m-instruct-0.1.2"
    for method, bits, ppl, kl, top1, ruler, path in (
            ("fp16", 16.0, 7.42, 0.0, 1.0, (92.0, 88.0), "fp16"),
            ("kivi", 4.08, 9.05, 0.204, 0.795, (80.0, 70.0), "reference"),
            ("oscar", 3.08, 8.05, 0.092, 0.871, (90.0, 85.0), "kernel")):
        meta = {"model": {"source": GGUF_SOURCE}, "config": {"runtime": {"decode_path": path}}}
        w.run("ppl", real, method, bits=bits, manifest_extra=meta,
              extra={"ppl": ppl, "kl": kl, "top1": top1, "average": ppl, "columns": {"PPL": ppl}})
        w.run("ruler", real, method, bits=bits, manifest_extra=meta,
              extra={"contexts": {"4096": ruler[0], "8192": ruler[1]}, "average": sum(ruler) / 2})
        w.run("niah", real, method, bits=bits, average=100.0, manifest_extra=meta,
              extra={"grid": {"1024": {"0": 100.0, "100": 100.0}}})
    old = [e2e_row("bf16-static-graph", 1, 131072, 99_000.0, 19 * 2**30), e2e_row("oscar-kernel-static", 1, 131072,
                                                                                    33_000.0, 4 * 2**30)]
    w.speed("e2e-old", old)
    rows = []
    for ctx, static, eager, oscar, kivi in ((4096, 9_048, 35_000, 8_475, 8_461), (32768, 10_016, 58_000, 8_841, 8_885),
                                            (131072, 13_653, 30_230, 9_774, 9_858)):
        kv = ctx * 36 * 8 * 512
        rows += [e2e_row("bf16-static-graph", 1, ctx, static, kv), e2e_row("bf16-dynamic-eager", 1, ctx, eager, kv),
                 e2e_row("oscar-kernel-static", 1, ctx, oscar, kv * 97 // 512),
                 e2e_row("kivi-kernel-static", 1, ctx, kivi, kv * 96 // 512)]
    for batch, static, eager, oscar in ((8, 10_622, 52_000, 9_655), (48, 21_600, 37_500, 12_742)):
        kv = 4096 * 36 * 8 * 512 * batch
        rows += [e2e_row("bf16-static-graph", batch, 4096, static, kv), e2e_row("bf16-dynamic-eager", batch, 4096,
                                                                                eager, kv),
                 e2e_row("oscar-kernel-static", batch, 4096, oscar, kv * 97 // 512)]
    w.speed("e2e-new", rows)
    data = json.loads((w.root / "speed" / "e2e-new.json").read_text())
    (w.root / "speed" / "e2e-new.json").write_text(json.dumps(data | {"created": "2026-11-29T10:00:00+00:00"}))
    data = json.loads((w.root / "speed" / "e2e-old.json").read_text())
    (w.root / "speed" / "e2e-old.json").write_text(json.dumps(data | {"created": "2026-11-28T10:00:00+00:00"}))

    def kernel(impl: str, context: int, us: float) -> dict[str, Any]:
        return {"level": "kernel", "arch": "qwen3-8b", "batch": 1, "context": context, "num_q_heads": 32,
                "num_kv_heads": 8, "head_dim": 128, "impl": impl, "median_us": us, "roofline_fraction": 0.5}

    w.kernels("k-old", [kernel("oscar-int2", 131072, 90.0), kernel("cudnn-sdpa-bf16", 131072, 126.0)],
              "2026-11-29T08:00:00+00:00", note="superseded")
    w.kernels("k-new", [kernel(i, c, us) for c, o, b in ((4096, 10.2, 11.5), (131072, 44.5, 126.0))
                        for i, us in (("oscar-int2", o), ("cudnn-sdpa-bf16", b))],
              "2026-11-29T09:43:00+00:00", note="current kernels")
    return w
