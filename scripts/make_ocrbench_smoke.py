"""Regenerate the OCRBench smoke fixture (oscar_eval/data/ocrbench_smoke/OCRBench.tsv).

VLMEvalKit's TSV format: index, image (base64 PNG, or the index of the row whose image to share),
question, answer (a Python-literal list), category. Tiny synthetic images drawn with Pillow's default
font; deterministic. Usage: python scripts/make_ocrbench_smoke.py
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "oscar_eval" / "data" / "ocrbench_smoke" / "OCRBench.tsv"

# (index, text drawn in the image or None = share the image of row `share`, question, answers, category)
ROWS = [
    (0, "HELLO", None, "what is written in the image?", ["HELLO"], "Regular Text Recognition"),
    (1, "wOrLd", None, "what is written in the image?", ["world"], "Irregular Text Recognition"),
    (2, "2026-11", None, "what is the number in the image?", ["202611", "2026-11"], "Digit String Recognition"),
    (3, "OPEN 9-5", None, "When does the shop open?", ["9"], "Scene Text-centric VQA"),
    (4, None, 3, "When does the shop close?", ["5"], "Scene Text-centric VQA"),
    (5, "TOTAL 12.50", None, "What is the total?", ["12.50"], "Doc-oriented VQA"),
    (6, "DATE 01/02", None, "What is the date?", ["01/02"], "Key Information Extraction"),
    (7, "x^{2}+1", None, "Please write out the expression of the formula in the image using LaTeX format.",
     ["x^{2}+1", "x ^ { 2 } + 1"], "Handwritten Mathematical Expression Recognition"),
]


def png(text: str) -> str:
    image = Image.new("RGB", (16 + 7 * len(text), 24), "white")
    ImageDraw.Draw(image).text((8, 6), text, fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "image", "question", "answer", "category"])
        for index, text, share, question, answers, category in ROWS:
            w.writerow([index, png(text) if text is not None else str(share), question, repr(answers), category])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
