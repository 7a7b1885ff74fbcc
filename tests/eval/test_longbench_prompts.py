"""Prompt templates and generation lengths are byte-identical to the official LongBench config.

The expected values below are copied from THUDM/LongBench ``LongBench/config/dataset2prompt.json`` and
``dataset2maxlen.json`` (the official repository), not from our YAML.
"""

from __future__ import annotations

import json

import pytest

from oscar_eval.benchmarks.longbench_e import LongBenchE, load_config

OFFICIAL_PROMPTS = {
    "qasper_e": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en_e": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "hotpotqa_e": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa_e": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "gov_report_e": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "multi_news_e": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "trec_e": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa_e": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum_e": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "passage_count_e": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en_e": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "lcc_e": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p_e": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

OFFICIAL_MAXLEN = {
    "qasper_e": 128, "multifieldqa_en_e": 64, "hotpotqa_e": 32, "2wikimqa_e": 32, "gov_report_e": 512,
    "multi_news_e": 512, "trec_e": 64, "triviaqa_e": 32, "samsum_e": 128, "passage_count_e": 32,
    "passage_retrieval_en_e": 32, "lcc_e": 64, "repobench-p_e": 64,
}

OFFICIAL_METRIC = {
    "qasper_e": "qa_f1", "multifieldqa_en_e": "qa_f1", "hotpotqa_e": "qa_f1", "2wikimqa_e": "qa_f1",
    "gov_report_e": "rouge", "multi_news_e": "rouge", "trec_e": "classification", "triviaqa_e": "qa_f1",
    "samsum_e": "rouge", "passage_count_e": "count", "passage_retrieval_en_e": "retrieval",
    "lcc_e": "code_sim", "repobench-p_e": "code_sim",
}


def test_thirteen_english_subsets_in_paper_order():
    assert list(load_config()["subsets"]) == list(OFFICIAL_PROMPTS)


@pytest.mark.parametrize("subset", list(OFFICIAL_PROMPTS))
def test_prompt_template_is_byte_identical(subset):
    cfg = load_config()["subsets"][subset]
    assert cfg["prompt"].encode("utf-8") == OFFICIAL_PROMPTS[subset].encode("utf-8")
    assert cfg["max_new_tokens"] == OFFICIAL_MAXLEN[subset]
    assert cfg["metric"] == OFFICIAL_METRIC[subset]


def test_official_chat_and_first_line_lists():
    subsets = load_config()["subsets"]
    no_chat = {s for s, c in subsets.items() if not c["chat_template"]}
    assert no_chat == {"trec_e", "triviaqa_e", "samsum_e", "lcc_e", "repobench-p_e"}
    first = {s for s, c in subsets.items() if c["first_line"]}
    assert first == {"trec_e", "triviaqa_e", "samsum_e"}
    assert {s for s, c in subsets.items() if c.get("stop_at_newline")} == {"samsum_e"}


@pytest.mark.parametrize("subset", list(OFFICIAL_PROMPTS))
def test_filled_prompt_matches_official_format(tmp_path, subset):
    rec = {"input": "Q {x}?", "context": "C\nwith {braces} and \"quotes\"", "answers": ["Paragraph 1"],
           "length": 10, "dataset": subset, "language": "en", "all_classes": ["City"], "_id": "abc"}
    (tmp_path / f"{subset}.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    item = next(LongBenchE(data_dir=tmp_path, subsets=[subset]).items(subset))
    assert item.prompt == OFFICIAL_PROMPTS[subset].format(**rec)
    assert item.max_new_tokens == OFFICIAL_MAXLEN[subset]
    assert item.item_id == f"{subset}/abc"
