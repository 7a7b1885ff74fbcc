"""One meaning of `1k` in every command: 1024 tokens (RULER's 4k = 4096), one parsing helper."""

from __future__ import annotations

import pytest

from oscar_eval.benchmarks import niah, ruler
from oscar_eval.commands import speed
from oscar_eval.errors import UserError
from oscar_eval.token_counts import parse_contexts, parse_token_count


def test_k_is_1024_and_counts_are_whole_positive_numbers():
    assert parse_contexts("1k, 2k,3000,1024") == [1024, 2048, 3000]  # 1k and 1024 are one context
    assert parse_contexts([512, "1.5k", "4K"]) == [512, 1536, 4096] and parse_contexts(42000) == [42000]
    assert parse_token_count("128k") == 131072
    for bad, why in (("0.3k", "not a whole number"), ("0", "positive"), ("4x", "not a token count"),
                     ("", "no context length"), ("-2", "not a token count")):
        with pytest.raises(UserError, match=why) as exc:
            parse_contexts(bad)
        assert "--contexts" in str(exc.value)
    with pytest.raises(UserError, match="--batches"):
        parse_token_count("x", option="--batches")


def test_every_command_reads_contexts_with_the_one_helper():
    assert niah.parse_contexts is parse_contexts and ruler.parse_contexts is parse_contexts
    assert speed._ints("1k,4k,128k") == (1024, 4096, 131072) and speed._ints("1,8") == (1, 8)
    # A NIAH grid of 1k is 1024 tokens: another context, item ids and run id than 1000 (the old meaning).
    bench = niah.NeedleInAHaystack(data_dir=niah.SMOKE_DATA, contexts="1k,2k", depths=1)
    assert bench.subsets() == ["1024", "2048"]
