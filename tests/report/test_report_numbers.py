"""The numbers in the rendered tables are the store's, next to the paper's, with the right difference."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import full_store, html_row, html_tables, md_row, md_table, record, speed_row

from oscar_eval.report import render_report

PAPER_ORDER = ["16-bit Baseline", "QuaRot", "RotateKV", "KIVI", "OTT", "TurboQuant+", "OScaR"]
LB_TITLE = "Average score over the 13 English LongBench-E subsets"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """One render of the full fixture store, shared by the read-only tests below (plots are slow)."""
    tmp = tmp_path_factory.mktemp("numbers")
    full_store(tmp / "results")
    out = tmp / "report"
    done = render_report(tmp / "results", out, title="Fixture report", generated="2026-11-29 08:00 UTC")
    return done.html.read_text(encoding="utf-8"), done.markdown.read_text(encoding="utf-8"), out


def test_table1_cell_shows_ours_paper_and_difference(rendered):
    html, md, _ = rendered
    # Row: label, paper bits, our bits, then (ours, paper, diff) for Llama-3.1-8B and Qwen3-8B.
    row = html_row(html, "table1-main", "OScaR")
    assert row[1:3] == ["INT2", "3.02"]
    assert row[3].startswith("41.20") and row[4:6] == ["41.75", "-0.55"]
    assert row[6:9] == ["48.74", "48.74", "+0.00"]
    assert html_row(html, "table1-main", "16-bit Baseline")[3:9] == ["41.50", "41.70", "-0.20", "49.00", "49.56",
                                                                      "-0.56"]
    md_cells = md_row(md, LB_TITLE, "OScaR")
    assert md_cells[3].startswith("41.20 (R") and md_cells[4:6] == ["41.75", "-0.55"]


def test_table1_model_labels_are_matched_to_the_paper_columns(rendered):
    html, md, _ = rendered
    header = html_tables(html)["table1-main"][0]
    assert header[3:] == ["Llama-3.1-8B", "Qwen3-8B"]  # "meta-llama/Meta-Llama-3.1-8B-Instruct" matched
    assert md_table(md, LB_TITLE)[0][3] == "Llama-3.1-8B ours"


def test_missing_cells_are_dashes_and_paper_rows_come_first_in_paper_order(rendered):
    html, md, _ = rendered
    labels = [r[0] for r in html_tables(html)["table1-main"][2:]]
    assert labels == PAPER_ORDER + ["mymethod"]
    assert [r[0] for r in md_table(md, LB_TITLE)[2:]] == PAPER_ORDER + ["mymethod"]
    # No QuaRot run: ours and the difference are missing, the paper's value is still shown.
    assert html_row(html, "table1-main", "QuaRot")[2:9] == ["—", "—", "37.94", "—", "—", "40.13", "—"]
    # A method the paper does not have: no paper value, never a made-up difference.
    assert html_row(html, "table1-main", "mymethod")[3:9] == ["—", "—", "—", "45.00", "—", "—"]


def test_failed_items_flag_the_cell_and_are_listed_without_predictions(rendered):
    html, md, _ = rendered
    assert html_row(html, "table1-main", "OScaR")[3] == "41.20 †"
    assert "† R3: 1 failed item" in html and "† R3: 1 failed item" in md
    failed = html_tables(html)["failed-items"]
    assert len(failed) == 2 and failed[1][3:5] == ["qasper_e", "qasper_e/0001"]
    assert "an answer" not in html and "an answer" not in md  # predictions of ok items are not shown


def test_lm_eval_protocol_is_reported_separately(rendered):
    html, md, _ = rendered
    assert "30.00" not in " ".join(sum(html_tables(html)["table1-main"], []))
    lm = html_tables(html)["longbench-e-lm-eval-main"]
    assert lm[0] == ["Method", "bits/elt", "Llama-3.1-8B"]  # ours only: no paper column
    assert lm[1][0] == "OScaR" and lm[1][2] == "30.00"
    assert md_row(md, "Headline score per model (lm-eval protocol)", "OScaR")[2].startswith("30.00")


def test_per_dataset_and_bucket_details(rendered):
    html, md, _ = rendered
    table = html_tables(html)["lb-details-paper-llama-3-1-8b"]
    assert table[0][1:] == ["16-bit Baseline R1", "KIVI R2", "OScaR R3"]
    assert table[1][:4] == ["0-4k", "4-8k", "8k+", "mean"]
    assert html_row(html, "lb-details-paper-llama-3-1-8b", "qasper_e")[9:] == ["42.20", "41.20", "40.20", "41.20"]
    assert html_row(html, "lb-details-paper-llama-3-1-8b", "Average (of dataset means)")[-1] == "41.20"
    assert md_row(md, "Llama-3.1-8B: per dataset and length bucket", "repobench-p\\_e")[-4:] == [
        "42.20", "41.20", "40.20", "41.20"]


def test_ocrbench_mmau_and_niah_tables(rendered):
    html, md, _ = rendered
    assert html_row(html, "table6-main", "OScaR")[6:9] == ["850", "856", "-6"]
    assert html_row(html, "table6-main", "OScaR")[3:6] == ["—", "519", "—"]  # LLaVA: no run
    mmau = html_row(html, "mmau-paper-qwen3-omni-30b-a3b", "OScaR")
    assert mmau[3:] == ["67.0", "67.4", "-0.4", "30.0", "29.8", "+0.2", "88.0", "88.5", "-0.5"]
    assert html_row(html, "niah-main", "OScaR")[3:] == ["96.0", "96.5", "-0.5"]
    assert md_row(md, "Score out of 1000", "OScaR")[6:9] == ["850 (R8)", "856", "-6"]


def test_efficiency_ratios_against_the_paper(rendered):
    html, md, _ = rendered
    table = html_tables(html)["eff-headline"]
    assert len(table) == 1 + 6  # three claims x two baseline styles
    decode = [r for r in table if r[0].startswith("Decode speed-up")]
    assert [r[1] for r in decode] == ["the paper's style (dynamic cache, eager)", "strongest BF16 baseline"]
    assert decode[0][3] == "not measured"  # the fixture has no dynamic-cache arm: nothing invented
    assert decode[1][2].startswith("3.0x") and decode[1][3] == "4.00x"  # 139.9 us / 35.0 us
    memory = next(r for r in table if r[0].startswith("KV memory") and r[1].startswith("strongest"))
    assert memory[2].startswith("5.3x") and memory[3] == "5.28x"  # 512 B / 97 B per token and head
    rows = html_tables(html)["speed-rows"]
    assert ["kernel", "qwen3-8b", "oscar-int2", "1", "131072", "35.0"] == rows[6][:6] and rows[6][10] == "4.00x"


def test_figures_are_written_and_embedded(rendered):
    html, md, out = rendered
    names = sorted(p.name for p in out.glob("fig-*.png"))
    assert names == ["fig-latency.png", "fig-memory.png", "fig-niah.png", "fig-pareto-longbench_e.png",
                     "fig-pareto-ocrbench.png", "fig-throughput.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 150_000
        assert f"]({name})" in md
        svg = name.removesuffix(".png") + ".svg"
        assert (out / svg).read_bytes().lstrip().startswith(b"<?xml") and f'href="{svg}"' in html
    assert html.count('src="data:image/png;base64,') == len(names)


def test_provenance_lists_every_run(rendered):
    html, _, _ = rendered
    runs = html_tables(html)["prov-runs"]
    assert len(runs) == 1 + 10
    r6 = next(r for r in runs if r[0] == "R3")
    assert "oscar" in r6[1] and "bits=2" in r6[6] and "NVIDIA H200" in r6[11] and "torch 2.13.0" in r6[10]
    assert 'id="prov-r3"' in html and 'href="#prov-r3"' in html
    assert html_tables(html)["prov-speed"][1][:3] == ["S1", "speed/h200-kernels.json", "NVIDIA H200"]


def test_newest_run_fills_a_cell_and_the_older_is_listed(writer, tmp_path):
    writer.run("longbench_e", "Llama-3.1-8B", "oscar", average=40.00, created="2026-11-01T00:00:00+00:00")
    writer.run("longbench_e", "Llama-3.1-8B", "oscar", average=41.00, created="2026-11-02T00:00:00+00:00")
    html = render_report(writer.root, tmp_path / "r").html.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "OScaR")[3] == "41.00"
    superseded = html_tables(html)["prov-superseded"]
    assert superseded[1][0] == "R1" and superseded[1][2] == "R2"


def test_only_speed_results(writer, tmp_path):
    oom = speed_row("oscar-int2", 1, 131072, 0.0) | {"median_us": None, "skip": "out of memory: <b>8 GiB</b>"}
    writer.speed("s", [speed_row("bf16-cudnn", 48, 4096, 200.0), speed_row("oscar-int2", 48, 4096, 50.0), oom])
    html = render_report(writer.root, tmp_path / "r").html.read_text(encoding="utf-8")
    headline = html_tables(html)["eff-headline"]
    throughput = next(r for r in headline if r[0].startswith("Throughput gain") and r[1].startswith("strongest"))
    assert throughput[2].startswith("4.1x") and throughput[3] == "4.00x"
    assert throughput[4] == "bf16-cudnn 240,000 tokens/s → oscar-int2 960,000 tokens/s"
    decode = next(r for r in headline if r[0].startswith("Decode speed-up") and r[1].startswith("strongest"))
    assert decode[3] == "not measured"  # no batch-1 128K rows: nothing invented
    assert "no batch-1 context sweep" in html.lower()
    assert html_row(html, "table1-main", "OScaR")[3:6] == ["—", "41.75", "—"]
    assert html_tables(html)["speed-skipped"][1] == ["kernel", "qwen3-8b", "oscar-int2", "1", "131072",
                                                    "out of memory: <b>8 GiB</b>", "S1"]
    assert "row 2" not in html  # a skipped point is not a damaged row


def test_records_sample_is_bounded(writer, tmp_path):
    records = [record("trec_e", i, failed=True, error=f"boom {i}") for i in range(10)]
    writer.run("longbench_e", "Qwen3-8B", "kivi", average=47.0, records=records)
    html = render_report(writer.root, tmp_path / "r").html.read_text(encoding="utf-8")
    assert len(html_tables(html)["failed-items"]) == 1 + 3
    assert html_row(html, "table1-main", "KIVI")[6] == "47.00 †"


def test_an_average_over_fewer_datasets_is_flagged(writer, tmp_path):
    subsets = {"qasper_e": {"0-4k": 50.0, "4-8k": None, "8k+": None, "mean": 50.0, "n": 3},
               "trec_e": {"0-4k": 40.0, "4-8k": 30.0, "8k+": None, "mean": 35.0, "n": 5}}
    writer.run("longbench_e", "Qwen3-8B", "oscar", average=42.5, extra={"subsets": subsets})
    done = render_report(writer.root, tmp_path / "r")
    html, md = done.html.read_text(encoding="utf-8"), done.markdown.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "OScaR")[6:9] == ["42.50 †", "48.74", "-6.24"]
    assert "† R1: average over 2 of 13 datasets" in html and "† R1: average over 2 of 13 datasets" in md
    # Empty buckets stay empty; the details list only the datasets that were run.
    details = html_tables(html)["lb-details-paper-qwen3-8b"]
    assert [r[0] for r in details[2:]] == ["qasper_e", "trec_e", "Average (of dataset means)"]
    assert details[2][1:] == ["50.00", "—", "—", "50.00"]


def test_smoke_runs_are_left_out_unless_asked_for(writer, tmp_path):
    import json

    writer.run("longbench_e", "Llama-3.1-8B", "oscar", average=40.00)
    for manifest in (writer.root / "runs").glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps(data | {"configuration": "smoke"}))
    html = render_report(writer.root, tmp_path / "r").html.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "OScaR")[3] == "—"
    assert "smoke configuration" in html and html_tables(html)["smoke-runs"][1][1] == "random weights"
    html = render_report(writer.root, tmp_path / "s", include_smoke=True).html.read_text(encoding="utf-8")
    assert html_row(html, "table1-main", "OScaR")[3] == "40.00 random weights"
