"""Caption text: normalisation, tokenisation and the word vocabulary.

The same rules run in two places and give identical token ids:

* in the TensorFlow graph (`SentenceTokenizer`, a Keras layer), built from
  ops that TF Serving links and that have TFLite kernels
  (`tensorflow_text.FastBertNormalizer` and `WhitespaceTokenizer`);
* in pure Python (`normalize_text`, `split_words`, `Vocabulary.encode`), the
  reference used to build the vocabulary and to check the graph.

Rules, in order:

1. Normalise like BERT's uncased normaliser: NFKC + case folding, accents
   stripped (NFD, combining marks dropped), control characters become
   spaces, default-ignorable characters (zero-width space, soft hyphen...)
   are removed.
2. Every Unicode punctuation or separator character (categories ``P*``,
   ``Z*``) becomes a space.
3. Split on whitespace; keep at most ``max_length`` words.
4. Look words up in the vocabulary: id 0 is padding, id 1 the out-of-vocabulary
   word. A sentence with no words becomes the single id 1, so even an empty
   string has a defined, finite embedding.

Parity between the two holds for every code point assigned in Python's
Unicode database; code points unassigned there may be normalised
differently by the graph op's newer tables.
"""

from __future__ import annotations

import collections
import os
import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

PAD_TOKEN = "<pad>"
OOV_TOKEN = "<unk>"
PAD_ID = 0
OOV_ID = 1
NUM_RESERVED = 2

# Punctuation and every Unicode separator become ASCII spaces before the
# whitespace split (the normaliser leaves U+1680, U+2028, U+2029 in place).
_SEPARATOR_PATTERN = r"[\p{P}\p{Z}]"

# Default-ignorable code points that ICU's NFKC case folding removes.
_IGNORABLE = frozenset(
    [0xAD, 0x34F, 0x61C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFEFF, 0xFFA0]
    + list(range(0x180B, 0x1810))
    + list(range(0x200B, 0x2010))
    + list(range(0x202A, 0x202F))
    + list(range(0x2060, 0x2070))
    + list(range(0xFE00, 0xFE10))
    + list(range(0xFFF0, 0xFFF9))
    + list(range(0x1BCA0, 0x1BCA4))
    + list(range(0x1D173, 0x1D17B))
    + list(range(0xE0000, 0xE1000))
)
# ICU does not treat OGHAM SPACE MARK as a separator in this normaliser.
_KEPT_SPACE = "\u1680"


def normalize_text(text: str) -> str:
    """Pure-Python twin of ``FastBertNormalizer(lower_case_nfd_strip_accents)``.

    Args:
        text: A raw sentence.

    Returns:
        The normalised sentence (punctuation not yet removed).
    """
    cleaned = []
    for char in text:
        if ord(char) in _IGNORABLE:
            continue
        category = unicodedata.category(char)
        if char == _KEPT_SPACE:
            cleaned.append(char)
        elif char in "\t\n\r" or category in ("Zs", "Cc", "Cf"):
            cleaned.append(" ")
        else:
            cleaned.append(char)
    folded = unicodedata.normalize("NFKC", "".join(cleaned)).casefold()
    folded = unicodedata.normalize("NFKC", folded)
    decomposed = unicodedata.normalize("NFD", folded)
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def split_words(text: str, max_length: Optional[int] = None) -> list[str]:
    """Normalises a sentence, drops punctuation and splits it into words.

    Args:
        text: A raw sentence.
        max_length: Keep at most this many words.

    Returns:
        The words, possibly empty.
    """
    normalized = normalize_text(text)
    no_punct = "".join(
        " " if unicodedata.category(c)[0] in "PZ" else c for c in normalized
    )
    words = no_punct.split()
    return words if max_length is None else words[:max_length]


class Vocabulary:
    """Word <-> id mapping. Ids 0 and 1 are padding and out-of-vocabulary.

    Args:
        words: The words after the two reserved entries, in id order.
    """

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if PAD_TOKEN in words or OOV_TOKEN in words:
            raise ValueError("the reserved tokens are added by Vocabulary itself")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.tokens = [PAD_TOKEN, OOV_TOKEN] + words
        self._ids = {word: i for i, word in enumerate(self.tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> Vocabulary:
        """Builds a vocabulary from (training) captions.

        Args:
            captions: Raw captions of the TRAIN split only.
            min_count: Keep words seen at least this many times (VSE++: 4).

        Returns:
            Words sorted by decreasing count, ties alphabetically.
        """
        counts = collections.Counter()
        for caption in captions:
            counts.update(split_words(caption))
        kept = [w for w, c in counts.items() if c >= min_count]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def id(self, word: str) -> int:
        return self._ids.get(word, OOV_ID)

    def encode(self, text: str, max_length: int) -> list[int]:
        """Python reference of `SentenceTokenizer`: token ids, unpadded."""
        ids = [self.id(w) for w in split_words(text, max_length)]
        return ids or [OOV_ID]

    def save(self, path: str) -> None:
        """Writes one token per line (reserved ones included), atomically."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(self.tokens) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f if line.rstrip("\n")]
        if tokens[:NUM_RESERVED] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError(f"{path}: must start with {PAD_TOKEN} and {OOV_TOKEN}")
        return cls(tokens[NUM_RESERVED:])


@keras.saving.register_keras_serializable(package="vse_tf")
class SentenceTokenizer(keras.layers.Layer):
    """Raw sentences -> padded word ids, in the TensorFlow graph.

    Call: ``tf.string [B]`` -> ``int32 [B, max_length]``, 0-padded on the
    right; a sentence with no words gives ``[1, 0, 0, ...]``.

    Args:
        vocabulary: Tokens in id order, reserved ones first (`Vocabulary.tokens`).
        max_length: Words kept per sentence.
    """

    def __init__(self, vocabulary: Sequence[str], max_length: int, **kwargs):
        super().__init__(trainable=False, dtype="int32", **kwargs)
        import tensorflow_text as tf_text  # registers the ops TF Serving needs

        self.vocabulary = list(vocabulary)
        self.max_length = int(max_length)
        self._normalizer = tf_text.FastBertNormalizer(lower_case_nfd_strip_accents=True)
        self._splitter = tf_text.WhitespaceTokenizer()
        keys = tf.constant(self.vocabulary[NUM_RESERVED:], dtype=tf.string)
        values = tf.range(NUM_RESERVED, len(self.vocabulary), dtype=tf.int64)
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=OOV_ID
        )

    def call(self, sentences):
        sentences = tf.reshape(tf.convert_to_tensor(sentences, tf.string), [-1])
        normalized = self._normalizer.normalize(sentences)
        no_punct = tf.strings.regex_replace(normalized, _SEPARATOR_PATTERN, " ")
        words = self._splitter.tokenize(no_punct)[:, : self.max_length]
        ids = tf.ragged.map_flat_values(self._table.lookup, words)
        ids = tf.cast(ids, tf.int32).to_tensor(
            default_value=PAD_ID, shape=[None, self.max_length]
        )
        empty = tf.equal(ids[:, :1], PAD_ID)
        first = tf.where(empty, tf.constant(OOV_ID, tf.int32), ids[:, :1])
        return tf.concat([first, ids[:, 1:]], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_length)

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.pop("dtype", None)
        config.update(vocabulary=self.vocabulary, max_length=self.max_length)
        return config


_TOKENIZE_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenize_fn(tokenizer: SentenceTokenizer):
    if tokenizer not in _TOKENIZE_FNS:
        _TOKENIZE_FNS[tokenizer] = tf.function(
            tokenizer.call,
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
    return _TOKENIZE_FNS[tokenizer]


def encode_captions(
    tokenizer: SentenceTokenizer, captions: Sequence[str], batch_size: int = 4096
) -> np.ndarray:
    """Tokenises many captions with the graph tokenizer.

    Args:
        tokenizer: The text tower's tokenizer layer.
        captions: ``[M]`` raw captions.
        batch_size: Captions per graph call.

    Returns:
        ``int32 [M, max_length]`` padded ids.
    """
    fn = _tokenize_fn(tokenizer)
    chunks = [
        fn(tf.constant(list(captions[i : i + batch_size]), tf.string)).numpy()
        for i in range(0, len(captions), batch_size)
    ]
    if not chunks:
        return np.zeros([0, tokenizer.max_length], np.int32)
    return np.concatenate(chunks, axis=0)
