"""Keyword and phrase matching for Chinese and English text, many keywords in one pass.

Text and keywords are normalised the same way (:func:`normalize`): Unicode
NFKC (full-width letters, digits and punctuation become half-width), case
folding, and runs of white space collapsed to one space. All keywords of all
rules go into one Aho-Corasick automaton (``ahocorasick-rs``), so a text is
scanned once, in time linear in its length, however many keywords there are.

Chinese has no spaces between words, so a keyword matches anywhere in the
text. With ``whole_words`` a keyword that begins (ends) with a Latin letter
or digit must not be preceded (followed) by one: ``cost`` then does not match
``costly``, while ``太贵`` still matches in ``太贵了``.

>>> m = KeywordMatcher(["太贵", "Too Expensive", "alternative", "cost"])
>>> sorted(m.keywords[i] for i in m.find("ＴＯＯ  expensive！有没有替代方案，太贵了")[0])
['too expensive', '太贵']
>>> any_hits, whole_hits = m.find("costly alternatives")
>>> sorted(m.keywords[i] for i in any_hits), sorted(m.keywords[i] for i in whole_hits)
(['alternative', 'cost'], [])
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Final

import ahocorasick_rs

__all__ = ["KeywordMatcher", "normalize"]

#: Code points from here on (CJK radicals, kana, hangul, ...) never form word boundaries.
_CJK_START: Final = 0x2E80


def normalize(text: str) -> str:
    """NFKC, case-folded, white space collapsed.

    >>> normalize("  ＡＬＴＥＲＮＡＴＩＶＥ\\u3000方案？ ")
    'alternative 方案?'
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _wordy(ch: str) -> bool:
    return ch.isalnum() and ord(ch) < _CJK_START


class KeywordMatcher:
    """One automaton over distinct normalised keywords.

    ``keywords[i]`` is the normalised keyword of index ``i``; :meth:`index`
    maps a raw keyword to its index.
    """

    def __init__(self, keywords: Sequence[str]) -> None:
        order: dict[str, int] = {}
        for kw in keywords:
            norm = normalize(kw)
            if not norm:
                raise ValueError(f"keyword {kw!r} is empty after normalisation")
            order.setdefault(norm, len(order))
        self.keywords: tuple[str, ...] = tuple(order)
        self._index = order
        self._edges = tuple((_wordy(k[0]), _wordy(k[-1])) for k in self.keywords)
        self._automaton = ahocorasick_rs.AhoCorasick(
            list(self.keywords), matchkind=ahocorasick_rs.MatchKind.Standard
        )

    def __len__(self) -> int:
        return len(self.keywords)

    def index(self, keyword: str) -> int:
        """The index of a (raw) keyword."""
        return self._index[normalize(keyword)]

    def find(self, text: str) -> tuple[set[int], set[int]]:
        """Indexes of keywords in ``text``: anywhere, and as whole words."""
        norm = normalize(text)
        hits = self._automaton.find_matches_as_indexes(norm, overlapping=True)
        anywhere: set[int] = set()
        whole: set[int] = set()
        edges = self._edges
        n = len(norm)
        for idx, start, end in hits:
            anywhere.add(idx)
            if idx in whole:
                continue
            first, last = edges[idx]
            if first and start > 0 and _wordy(norm[start - 1]):
                continue
            if last and end < n and _wordy(norm[end]):
                continue
            whole.add(idx)
        return anywhere, whole
