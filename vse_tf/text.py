"""Caption text: normalisation, tokenisation and the word vocabulary.

The same rules run in two places and give identical token ids:

* in the TensorFlow graph (`SentenceTokenizer`, a Keras layer), built only
  from ops that TF Serving links and that LiteRT can run: tensorflow-text's
  ``FastBertNormalizer`` and ``FastWordpieceTokenizer`` (both have TFLite
  kernels; regex ops have none) plus TFLite builtins;
* in pure Python (`normalize_text`, `split_words`, `Vocabulary.encode`), the
  reference used to build the vocabulary and to check the graph.

Rules, in order:

1. Normalise like BERT's uncased normaliser: NFKC + case folding, accents
   stripped (NFD, combining marks dropped), control characters become
   spaces, default-ignorable characters (zero-width space, soft hyphen...)
   are removed.
2. Whitespace and Unicode separators (``Z*``) end a word.
3. Punctuation ends a word and is dropped: Unicode ``P*`` plus the ASCII
   symbols ``$+<=>^`|~`` (BERT's definition, which the tokenizer op uses).
4. Each CJK ideograph is a word of its own (BERT's pre-tokenisation).
5. Keep at most ``max_length`` words; look them up in the vocabulary: id 0 is
   padding, id 1 the out-of-vocabulary word (a whole unknown word is one
   ``<unk>``). A sentence with no words becomes the single id 1, so even an
   empty string has a defined, finite embedding.

In the graph, FastWordpiece runs end-to-end (whitespace and punctuation
splitting) over a word-level vocabulary extended by every punctuation
character; punctuation ids are then dropped. With no ``##`` entries in the
vocabulary, an unknown word maps to ``<unk>`` whole instead of to pieces.

Parity between the two holds for every code point assigned in Python's
Unicode database; code points unassigned there may be normalised
differently by the graph op's newer tables.
"""

from __future__ import annotations

import collections
import functools
import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import io_utils

PAD_TOKEN = "<pad>"
OOV_TOKEN = "<unk>"
PAD_ID = 0
OOV_ID = 1
NUM_RESERVED = 2


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


# BERT's punctuation beyond Unicode P*: ASCII symbols it also splits off.
ASCII_SYMBOL_PUNCTUATION = "$+<=>^`|~"
# BERT's CJK ideograph ranges; each such character is a word of its own.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_punctuation(char: str) -> bool:
    """Whether a character is punctuation for the tokenizer (dropped)."""
    return unicodedata.category(char)[0] == "P" or char in ASCII_SYMBOL_PUNCTUATION


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def split_words(text: str, max_length: Optional[int] = None) -> list[str]:
    """Normalises a sentence, drops punctuation and splits it into words.

    Args:
        text: A raw sentence.
        max_length: Keep at most this many words.

    Returns:
        The words, possibly empty.
    """
    pieces = []
    for char in normalize_text(text):
        if char.isspace() or unicodedata.category(char)[0] == "Z":
            pieces.append(" ")
        elif is_punctuation(char):
            pieces.append(" ")
        elif _is_cjk(char):
            pieces.append(f" {char} ")
        else:
            pieces.append(char)
    words = "".join(pieces).split()
    return words if max_length is None else words[:max_length]


@functools.lru_cache(maxsize=1)
def punctuation_characters() -> tuple[str, ...]:
    """Every character the graph tokenizer splits off as punctuation."""
    chars = {
        chr(code)
        for code in range(0x110000)
        if not 0xD800 <= code <= 0xDFFF and unicodedata.category(chr(code))[0] == "P"
    }
    return tuple(sorted(chars | set(ASCII_SYMBOL_PUNCTUATION)))


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
        """The id of a word; unknown words and the reserved tokens give 1."""
        found = self._ids.get(word, OOV_ID)
        return found if found >= NUM_RESERVED else OOV_ID

    def encode(self, text: str, max_length: int) -> list[int]:
        """Python reference of `SentenceTokenizer`: token ids, unpadded."""
        ids = [self.id(w) for w in split_words(text, max_length)]
        return ids or [OOV_ID]

    def save(self, path: str) -> None:
        """Writes one token per line (reserved ones included), atomically."""
        io_utils.atomic_write_text(path, "\n".join(self.tokens) + "\n")

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f if line.rstrip("\n")]
        if tokens[:NUM_RESERVED] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError(f"{path}: must start with {PAD_TOKEN} and {OOV_TOKEN}")
        return cls(tokens[NUM_RESERVED:])


def pad_word_ids(
    ids: tf.Tensor, row_splits: tf.Tensor, keep: tf.Tensor, max_length: int
) -> tf.Tensor:
    """Ragged word ids -> ``int32 [B, max_length]``, with TFLite builtins only.

    Drops the ids where ``keep`` is False, keeps the first ``max_length`` of
    each row, pads with 0 and turns an empty row into ``[1, 0, ...]``. Ragged
    ops (RaggedRange, RaggedTensorToTensor) have no LiteRT kernels, so this
    works from the flat values and row splits with cumsum and scatter.

    Args:
        ids: ``int32 [T]`` flat ids of the whole batch.
        row_splits: ``[B + 1]`` row boundaries into ``ids``.
        keep: ``bool [T]``.
        max_length: L.

    Returns:
        ``int32 [B, L]``.
    """
    row_splits = tf.cast(row_splits, tf.int32)
    total = tf.shape(ids)[0]
    rows = tf.shape(row_splits)[0] - 1
    # Row of each flat position: count the row starts at or before it.
    starts = tf.scatter_nd(
        row_splits[1:-1, None],
        tf.ones_like(row_splits[1:-1]),
        tf.reshape(total + 1, [1]),
    )
    row_of = tf.cumsum(starts)[:-1]
    kept = tf.cast(keep, tf.int32)
    kept_before = tf.concat([tf.zeros([1], tf.int32), tf.cumsum(kept)], axis=0)
    position = kept_before[:-1] - tf.gather(kept_before, tf.gather(row_splits, row_of))
    valid = tf.logical_and(keep, position < max_length)
    position = tf.where(valid, position, max_length)  # spill column, cut below
    values = tf.where(valid, ids, tf.zeros_like(ids))
    dense = tf.scatter_nd(
        tf.stack([row_of, position], axis=1), values, tf.stack([rows, max_length + 1])
    )[:, :max_length]
    first = tf.where(
        tf.equal(dense[:, :1], PAD_ID),
        tf.ones_like(dense[:, :1]) * OOV_ID,
        dense[:, :1],
    )
    return tf.concat([first, dense[:, 1:]], axis=1)


@keras.saving.register_keras_serializable(package="vse_tf")
class SentenceTokenizer(keras.layers.Layer):
    """Raw sentences -> padded word ids, in the TensorFlow graph.

    Call: ``tf.string [B]`` -> ``int32 [B, max_length]``, 0-padded on the
    right; a sentence with no words gives ``[1, 0, 0, ...]``. Uses only
    ``FastBertNormalize`` and ``FastWordpieceTokenize`` (tensorflow-text ops
    with TFLite kernels) and TFLite builtins.

    Args:
        vocabulary: Tokens in id order, reserved ones first (`Vocabulary.tokens`).
        max_length: Words kept per sentence.
    """

    def __init__(self, vocabulary: Sequence[str], max_length: int, **kwargs):
        super().__init__(trainable=False, dtype="int32", **kwargs)
        import tensorflow_text as tf_text  # registers the ops TF Serving needs

        self.vocabulary = list(vocabulary)
        self.max_length = int(max_length)
        if self.vocabulary[:NUM_RESERVED] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError(f"vocabulary must start with {PAD_TOKEN}, {OOV_TOKEN}")
        self._normalizer = tf_text.FastBertNormalizer(lower_case_nfd_strip_accents=True)
        # Reserved tokens are unreachable from text: '<' and '>' are
        # punctuation, so "<unk>" is split into "unk".
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=self.vocabulary + list(punctuation_characters()),
            suffix_indicator="##",
            max_bytes_per_word=1000,
            token_out_type=tf.int32,
            unknown_token=OOV_TOKEN,
            no_pretokenization=False,
            support_detokenization=False,
        )

    def call(self, sentences):
        sentences = tf.reshape(tf.convert_to_tensor(sentences, tf.string), [-1])
        # Grappler can drop the reshape of a [None] input, and the tf_text
        # kernels crash (SIGSEGV) on a scalar; ensure_shape is checked at run
        # time and kept.
        sentences = tf.ensure_shape(sentences, [None])
        pieces = self._wordpiece.tokenize(self._normalizer.normalize(sentences))
        ids = pieces.flat_values
        keep = ids < len(self.vocabulary)  # punctuation ids come after the words
        return pad_word_ids(ids, pieces.row_splits, keep, self.max_length)

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
