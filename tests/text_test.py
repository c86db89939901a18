"""Tests for vse_tf.text: graph tokenizer vs. the pure-Python reference."""

from __future__ import annotations

import random
import unicodedata

import keras
import numpy as np
import pytest
import tensorflow as tf

from vse_tf import text as text_lib
from vse_tf.text import (
    OOV_ID,
    OOV_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    SentenceTokenizer,
    Vocabulary,
    encode_captions,
    normalize_text,
    split_words,
)

MAX_LENGTH = 6

# Words the tokenizer should know; everything else maps to OOV.
VOCAB_WORDS = [
    "a",
    "the",
    "dog",
    "cafe",
    "naive",
    "angstrom",
    "don",
    "t",
    "it",
    "s",
    "fine",
    "abc",
    "hello",
    "world",
    "猫",
    "x",
    "y",
    "z",
]

TABLE = [
    "",
    "a dog",
    "The DOG",
    "café naïve ÅNGSTRÖM",
    "CAFÉ",
    "Cafe\u0301",  # combining acute accent
    "dog,dog",
    "dog , dog",
    "don't it's",
    "don’t it’s",
    "dog—the dog",
    "dog — the",
    '"hello" world',
    "“hello” «world»",
    "hello...world",
    "...",
    "?!.,;:'\"()[]{}—–-…",
    "a\tdog\nthe\rdog",
    "a\u00a0dog",  # no-break space
    "a\u200bdog",  # zero-width space (removed, joins the words)
    "do\u00adg",  # soft hyphen (removed)
    "\ufb01ne",  # ligature fi
    "ＡＢＣ ｄｏｇ",  # fullwidth
    "猫 dog 狗",
    "猫狗",
    "a dog 🐶 the 😀",
    "🐶🐶🐶",
    "   ",
    "\t\n",
    "x y z a the dog cafe naive hello world",  # truncated to MAX_LENGTH
    "a, b, c, d, e, f, g, h, i, j",
    "ß straße",
    "İstanbul ǅ ﬀ",
    "\u2160 \u2460 ½",  # roman numeral, circled one, vulgar fraction
    "hello\x00world\x07",
    "\u1680dog a\u1680dog",  # ogham space mark: a separator, leading and inside
    "x_y x-y x/y x@y x#y",
    "$100 +5 = 3^2 <tag>",
]


# U+1680 OGHAM SPACE MARK (Zs, kept by the normaliser), U+2028 LINE SEPARATOR
# (Zl) and U+2029 PARAGRAPH SEPARATOR (Zp) survive FastBertNormalizer, and
# tf_text.WhitespaceTokenizer splits them at a wrong byte offset; the tokenizer
# therefore maps every separator to an ASCII space first. Regression test.
MULTIBYTE_SEPARATORS = ("\u1680", "\u2028", "\u2029")


def _random_strings(count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    assigned_bmp = []
    while len(assigned_bmp) < 4000:
        cp = rng.randrange(0x20, 0x10000)
        char = chr(cp)
        if unicodedata.category(char) not in ("Cn", "Cs"):
            assigned_bmp.append(char)
    pools = [
        [chr(c) for c in range(0x20, 0x7F)] + [" "] * 20,  # ASCII, extra spaces
        [chr(c) for c in range(0xA0, 0x100)],  # Latin-1
        [chr(c) for c in range(0x300, 0x370)],  # combining marks
        assigned_bmp,
        list("aeiou thedogcafé ,.'’—"),  # likely vocabulary hits
    ]
    weights = [4, 2, 1, 2, 3]
    strings = []
    for _ in range(count):
        length = rng.randrange(0, 25)
        chars = [rng.choice(rng.choices(pools, weights)[0]) for _ in range(length)]
        strings.append("".join(chars))
    return strings


def _padded_reference(vocab: Vocabulary, sentence: str, max_length: int):
    ids = vocab.encode(sentence, max_length)
    return ids + [PAD_ID] * (max_length - len(ids))


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(VOCAB_WORDS)


@pytest.fixture(scope="module")
def tokenizer(vocab):
    return SentenceTokenizer(vocab.tokens, MAX_LENGTH)


def _assert_parity(tokenizer, vocab, sentences):
    got = tokenizer(tf.constant(sentences, tf.string)).numpy()
    assert got.shape == (len(sentences), MAX_LENGTH)
    assert got.dtype == np.int32
    mismatches = []
    for sentence, row in zip(sentences, got):
        want = _padded_reference(vocab, sentence, MAX_LENGTH)
        if list(row) != want:
            mismatches.append((sentence, [hex(ord(c)) for c in sentence], row, want))
    assert not mismatches, mismatches[:5]


class TestParity:
    def test_table(self, tokenizer, vocab):
        _assert_parity(tokenizer, vocab, TABLE)

    def test_random_strings(self, tokenizer, vocab):
        _assert_parity(tokenizer, vocab, _random_strings(400))

    def test_every_assigned_bmp_code_point_between_words(self, tokenizer, vocab):
        # "a<c>dog" and "<c>x<c>" for each assigned BMP code point <c>: catches
        # any single character the two implementations treat differently.
        chars = [
            chr(cp)
            for cp in range(0x20, 0x10000)
            if unicodedata.category(chr(cp)) not in ("Cn", "Cs")
        ]
        assert len(chars) > 50000
        _assert_parity(tokenizer, vocab, [f"a{c}dog" for c in chars])
        _assert_parity(tokenizer, vocab, [f"{c}x{c}" for c in chars])

    @pytest.mark.parametrize("sep", MULTIBYTE_SEPARATORS)
    def test_multibyte_separators(self, tokenizer, vocab, sep):
        _assert_parity(tokenizer, vocab, [f"a{sep}dog{sep}the"])

    def test_table_values_by_hand(self, tokenizer, vocab):
        got = tokenizer(
            tf.constant(
                ["", "café naïve ÅNGSTRÖM", "don’t", "\ufb01ne", "a\u200bdog", "?!"]
            )
        ).numpy()
        v = vocab.id
        np.testing.assert_array_equal(got[0], [OOV_ID, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(
            got[1], [v("cafe"), v("naive"), v("angstrom"), 0, 0, 0]
        )
        np.testing.assert_array_equal(got[2], [v("don"), v("t"), 0, 0, 0, 0])
        np.testing.assert_array_equal(got[3], [v("fine"), 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(got[4], [OOV_ID, 0, 0, 0, 0, 0])  # "adog"
        np.testing.assert_array_equal(got[5], [OOV_ID, 0, 0, 0, 0, 0])

    def test_truncation(self, tokenizer, vocab):
        sentence = "x y z a the dog cafe naive"
        got = tokenizer(tf.constant([sentence])).numpy()[0]
        want = [vocab.id(w) for w in sentence.split()[:MAX_LENGTH]]
        np.testing.assert_array_equal(got, want)

    def test_scalar_and_rank2_inputs_are_flattened(self, tokenizer):
        assert tokenizer(tf.constant("a dog")).shape == (1, MAX_LENGTH)
        assert tokenizer(tf.constant([["a"], ["dog"]])).shape == (2, MAX_LENGTH)

    def test_inside_tf_function(self, tokenizer, vocab):
        fn = tf.function(tokenizer, input_signature=[tf.TensorSpec([None], tf.string)])
        sentences = TABLE[:10]
        np.testing.assert_array_equal(
            fn(tf.constant(sentences)).numpy(),
            tokenizer(tf.constant(sentences)).numpy(),
        )


class TestNormalizeText:
    @pytest.mark.parametrize(
        "raw, expected",
        [
            ("Hello World", "hello world"),
            ("café", "cafe"),
            ("naïve ÅNGSTRÖM", "naive angstrom"),
            ("Cafe\u0301", "cafe"),
            ("ß", "ss"),
            ("\ufb01ne", "fine"),
            ("ＡＢＣ", "abc"),
            ("a\tb\nc\rd", "a b c d"),
            ("a\u00a0b", "a b"),
            ("a\u200bb", "ab"),
            ("do\u00adg", "dog"),
            ("\ufeffx", "x"),
            ("a\x00b", "a b"),
            ("猫", "猫"),
            ("🐶", "🐶"),
            ("don’t, “x”", "don’t, “x”"),
            ("", ""),
        ],
    )
    def test_examples(self, raw, expected):
        assert normalize_text(raw) == expected

    def test_split_words_drops_punctuation(self):
        assert split_words("Hello, World! It's—fine...") == [
            "hello",
            "world",
            "it",
            "s",
            "fine",
        ]
        assert split_words("a b c d", max_length=2) == ["a", "b"]
        assert split_words("?!...") == []
        assert split_words("") == []


class TestVocabulary:
    def test_build_min_count_and_order(self):
        captions = [
            "b b b a",
            "a c c",
            "B, c. d",
            "d e",
            "a",
        ]
        # counts: a=3, b=4, c=3, d=2, e=1
        vocab = Vocabulary.build(captions, min_count=2)
        assert vocab.tokens == [PAD_TOKEN, OOV_TOKEN, "b", "a", "c", "d"]
        assert len(vocab) == 6
        vocab3 = Vocabulary.build(captions, min_count=3)
        assert vocab3.tokens == [PAD_TOKEN, OOV_TOKEN, "b", "a", "c"]

    def test_reserved_ids_and_oov(self):
        vocab = Vocabulary(["dog", "cat"])
        assert vocab.tokens[PAD_ID] == PAD_TOKEN and PAD_ID == 0
        assert vocab.tokens[OOV_ID] == OOV_TOKEN and OOV_ID == 1
        # Words never map to the reserved ids, even when spelled like them.
        assert vocab.id(PAD_TOKEN) == OOV_ID
        assert vocab.id(OOV_TOKEN) == OOV_ID
        assert vocab.encode("<pad> dog", 5) == [1, 2]
        assert vocab.id("dog") == 2
        assert vocab.id("cat") == 3
        assert vocab.id("zebra") == OOV_ID
        assert vocab.encode("Dog zebra CAT", 5) == [2, 1, 3]
        assert vocab.encode("", 5) == [OOV_ID]
        assert vocab.encode("!!", 5) == [OOV_ID]
        assert _padded_reference(vocab, "", 4) == [1, 0, 0, 0]

    def test_rejects_reserved_and_duplicates(self):
        with pytest.raises(ValueError):
            Vocabulary(["dog", PAD_TOKEN])
        with pytest.raises(ValueError):
            Vocabulary(["dog", "dog"])

    def test_save_load_round_trip(self, tmp_path):
        vocab = Vocabulary(["dog", "猫", "café"])
        path = str(tmp_path / "vocab.txt")
        vocab.save(path)
        assert not (tmp_path / "vocab.txt.tmp").exists()
        loaded = Vocabulary.load(path)
        assert loaded == vocab
        assert loaded.tokens == vocab.tokens
        with open(path, encoding="utf-8") as f:
            assert f.read().splitlines()[:2] == [PAD_TOKEN, OOV_TOKEN]

    def test_load_without_reserved_tokens_fails(self, tmp_path):
        path = tmp_path / "bad.txt"
        path.write_text("dog\ncat\n", encoding="utf-8")
        with pytest.raises(ValueError, match="must start with"):
            Vocabulary.load(str(path))


class TestTokenizerLayer:
    def test_config_round_trip(self, tokenizer):
        config = tokenizer.get_config()
        assert config["max_length"] == MAX_LENGTH
        assert config["vocabulary"] == tokenizer.vocabulary
        clone = SentenceTokenizer.from_config(config)
        sentences = tf.constant(TABLE)
        np.testing.assert_array_equal(
            clone(sentences).numpy(), tokenizer(sentences).numpy()
        )
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(tokenizer)
        )
        assert isinstance(restored, SentenceTokenizer)
        np.testing.assert_array_equal(
            restored(sentences).numpy(), tokenizer(sentences).numpy()
        )

    def test_not_trainable_and_output_shape(self, tokenizer):
        assert not tokenizer.trainable
        assert tokenizer.compute_output_shape((5,)) == (5, MAX_LENGTH)

    def test_encode_captions_batches_match_single_calls(self, tokenizer):
        captions = TABLE + _random_strings(30, seed=7)
        batched = encode_captions(tokenizer, captions, batch_size=7)
        assert batched.shape == (len(captions), MAX_LENGTH)
        assert batched.dtype == np.int32
        singles = np.concatenate(
            [tokenizer(tf.constant([c])).numpy() for c in captions], axis=0
        )
        np.testing.assert_array_equal(batched, singles)
        np.testing.assert_array_equal(
            encode_captions(tokenizer, captions, batch_size=4096), singles
        )

    def test_encode_captions_empty(self, tokenizer):
        out = encode_captions(tokenizer, [])
        assert out.shape == (0, MAX_LENGTH)
        assert out.dtype == np.int32

    def test_encode_captions_caches_one_function_per_tokenizer(self, tokenizer):
        encode_captions(tokenizer, ["a dog"])
        fn = text_lib._tokenize_fn(tokenizer)
        encode_captions(tokenizer, ["the dog", "x"])
        assert text_lib._tokenize_fn(tokenizer) is fn


def test_split_rules_by_hand():
    assert split_words("$100 +5 = a|b") == ["100", "5", "a", "b"]
    assert split_words("日本語 dog") == ["日", "本", "語", "dog"]
    assert split_words("rock—and—roll, 'twas") == ["rock", "and", "roll", "twas"]
    assert split_words("a\u2028b\u3000c") == ["a", "b", "c"]


def test_graph_uses_only_ops_that_litert_can_run():
    # tf_text's TFLite kernels cover FastBertNormalize and FastWordpieceTokenize;
    # regex and ragged-range ops would make text_tower_strings.tflite impossible.
    tokenizer = SentenceTokenizer(Vocabulary(["dog"]).tokens, 6)
    fn = tf.function(tokenizer.call, input_signature=[tf.TensorSpec([None], tf.string)])
    graph = fn.get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    for func in graph._functions.values():
        op_types |= {node.op for node in func.definition.node_def}
    assert "FastBertNormalize" in op_types
    assert any(t.startswith("FastWordpieceTokenize") for t in op_types)
    forbidden = {
        "StaticRegexReplace",
        "RegexReplace",
        "RaggedRange",
        "RaggedTensorToTensor",
    }
    assert not op_types & forbidden, op_types & forbidden


def test_all_empty_and_zero_size_batches():
    tokenizer = SentenceTokenizer(Vocabulary(["dog"]).tokens, 4)
    np.testing.assert_array_equal(
        tokenizer(tf.constant(["", "..."])).numpy(), [[1, 0, 0, 0], [1, 0, 0, 0]]
    )
    assert tokenizer(tf.constant([], tf.string)).numpy().shape == (0, 4)
    np.testing.assert_array_equal(tokenizer(tf.constant(["dog " * 10])), [[2] * 4])
