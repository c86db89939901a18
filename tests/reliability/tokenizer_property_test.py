"""Property test: the graph tokenizer gives the Python reference's ids.

`vse_tf.text.SentenceTokenizer` (tensorflow-text ops, what serving runs)
against `vse_tf.text.Vocabulary.encode` (pure Python) on random Unicode
text: any assigned code point (the documented scope of the parity),
punctuation, every kind of whitespace and separator, and words that are in
the vocabulary in several spellings (case, accents, full width).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from vse_tf.text import PAD_ID, SentenceTokenizer, Vocabulary

MAX_LENGTH = 7
WORDS = ["a", "dog", "the", "cafe", "naive", "don", "t", "猫", "x", "über", "ω", "2"]
VOCAB = Vocabulary(WORDS)
TOKENIZER = SentenceTokenizer(VOCAB.tokens, MAX_LENGTH)
TOKENIZE = tf.function(
    TOKENIZER.call, input_signature=[tf.TensorSpec([None], tf.string)]
)

WHITESPACE = list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u180e")
WHITESPACE += [chr(c) for c in range(0x2000, 0x200B)]
WHITESPACE += list("\u2028\u2029\u202f\u205f\u3000\u200b\u200c\u200d\u2060\ufeff\xad")
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡§«¶·»¿")
PUNCTUATION += list("‐‑‒–—―‘’‚‛“”„‟†‡•…‰′″‹›、。〃〈〉《》「」『』【】〔〕・！？")
SPELLINGS = WORDS + ["A", "DOG", "The", "café", "CAFÉ", "naïve", "NAÏVE", "ｄｏｇ"]
SPELLINGS += ["ÜBER", "Ω", "²", "don’t", "Cafe\u0301", "d\u200bog"]


def _assigned(char: str) -> bool:
    # Parity is documented for code points assigned in Python's Unicode
    # database; surrogates cannot be encoded at all.
    return unicodedata.category(char) not in ("Cn", "Cs")


ANY_CHAR = st.characters(codec="utf-8").filter(_assigned)
PIECE = st.one_of(
    ANY_CHAR,
    st.characters(min_codepoint=0x20, max_codepoint=0x24F).filter(_assigned),
    st.characters(min_codepoint=0x10000, codec="utf-8").filter(_assigned),
    st.sampled_from(WHITESPACE),
    st.sampled_from(PUNCTUATION),
    st.sampled_from(SPELLINGS),
)
SENTENCE = st.lists(PIECE, max_size=40).map("".join)


def _reference(sentence: str) -> list[int]:
    ids = VOCAB.encode(sentence, MAX_LENGTH)
    return ids + [PAD_ID] * (MAX_LENGTH - len(ids))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(SENTENCE, min_size=1, max_size=8))
def test_graph_ids_equal_python_reference(sentences):
    got = TOKENIZE(tf.constant([s.encode("utf-8") for s in sentences])).numpy()
    assert got.shape == (len(sentences), MAX_LENGTH)
    for sentence, row in zip(sentences, got):
        assert row.tolist() == _reference(sentence), [hex(ord(c)) for c in sentence]


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(SPELLINGS + PUNCTUATION), min_size=0, max_size=60))
def test_long_sentences_keep_the_first_words(pieces):
    sentence = " ".join(pieces)
    row = TOKENIZE(tf.constant([sentence])).numpy()[0]
    assert row.tolist() == _reference(sentence)
    # Never all padding (an empty sentence is the unknown word), and padding
    # only on the right.
    assert row[0] != PAD_ID
    pads = row == PAD_ID
    assert not pads.any() or pads[np.argmax(pads) :].all()
