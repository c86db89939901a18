"""Tests for vse_tf.models.text_tower."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.text import Vocabulary

WORDS = [
    "a",
    "the",
    "dog",
    "cat",
    "red",
    "blue",
    "square",
    "stripe",
    "on",
    "black",
    "is",
    "one",
    "that",
    "runs",
    "grass",
    "man",
    "woman",
    "ball",
]
VOCAB = Vocabulary(WORDS).tokens  # 20 tokens
EMBED_DIM = 16
WORD_DIM = 8
MAX_LENGTH = 8
SENTENCES = [
    "a red square",
    "The dog runs on the grass.",
    "one blue stripe that is on black",
    "a man, a woman and a ball",
    "",
    "?!...",
    "zebra",
]


def _make_tower(**kwargs) -> LSTMTextTower:
    keras.utils.set_random_seed(0)
    args = dict(
        vocabulary=VOCAB, embed_dim=EMBED_DIM, word_dim=WORD_DIM, max_length=MAX_LENGTH
    )
    args.update(kwargs)
    return LSTMTextTower(**args)


@pytest.fixture(scope="module")
def tower():
    tower = _make_tower()
    tower(tf.constant(SENTENCES[:1]))  # build the LSTM
    return tower


def _norms(x) -> np.ndarray:
    return np.linalg.norm(np.asarray(x), axis=1)


class TestTextTower:
    def test_output_unit_norm(self, tower):
        out = tower(tf.constant(SENTENCES))
        assert tuple(out.shape) == (len(SENTENCES), EMBED_DIM)
        assert out.dtype == "float32"
        np.testing.assert_allclose(_norms(out), 1.0, atol=1e-5)

    def test_empty_and_punctuation_are_finite_units(self, tower):
        out = np.asarray(tower(tf.constant(["", "?!...", " , ", "\t"])))
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(_norms(out), 1.0, atol=1e-5)
        # All of them are the single OOV token.
        for row in out[1:]:
            np.testing.assert_allclose(row, out[0], atol=1e-6)
        oov = np.asarray(tower(tf.constant(["zebra"])))[0]
        np.testing.assert_allclose(out[0], oov, atol=1e-6)

    def test_call_equals_encode_tokens_of_tokenizer(self, tower):
        strings = tf.constant(SENTENCES)
        ids = tower.tokenizer(strings)
        assert tuple(ids.shape) == (len(SENTENCES), MAX_LENGTH)
        np.testing.assert_allclose(
            np.asarray(tower(strings)),
            np.asarray(tower.encode_tokens(ids)),
            rtol=1e-6,
            atol=1e-6,
        )

    def test_padding_invariance(self, tower):
        ids = np.asarray(tower.tokenizer(tf.constant(SENTENCES)))
        pad4 = np.pad(ids, [(0, 0), (0, 4)])
        assert pad4.shape == (len(SENTENCES), 12)
        np.testing.assert_allclose(
            np.asarray(tower.encode_tokens(ids)),
            np.asarray(tower.encode_tokens(pad4)),
            atol=1e-6,
        )
        # Trimmed to the longest sentence (L=7) gives the same too.
        np.testing.assert_allclose(
            np.asarray(tower.encode_tokens(ids)),
            np.asarray(tower.encode_tokens(ids[:, :7])),
            atol=1e-6,
        )

    def test_word_order_and_content_matter(self, tower):
        out = np.asarray(tower(tf.constant(["a red square", "square red a", "dog"])))
        assert not np.allclose(out[0], out[1], atol=1e-4)
        assert not np.allclose(out[0], out[2], atol=1e-4)

    def test_word_vectors_assigned_and_frozen(self):
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(VOCAB), WORD_DIM)).astype(np.float32)
        tower = _make_tower(word_vectors=vectors)
        embeddings = tower.word_embedding.embeddings
        np.testing.assert_array_equal(np.asarray(embeddings), vectors)
        tower(tf.constant(["a dog"]))
        trainable_ids = {id(w) for w in tower.trainable_weights}
        assert id(embeddings) not in trainable_ids
        assert id(embeddings) in {id(w) for w in tower.non_trainable_weights}
        # Only the LSTM trains: kernel, recurrent kernel, bias.
        assert len(tower.trainable_weights) == 3

    def test_word_vectors_trainable(self):
        vectors = np.ones((len(VOCAB), WORD_DIM), np.float32)
        tower = _make_tower(word_vectors=vectors, train_word_embeddings=True)
        tower(tf.constant(["a dog"]))
        embeddings = tower.word_embedding.embeddings
        assert id(embeddings) in {id(w) for w in tower.trainable_weights}
        assert len(tower.trainable_weights) == 4
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tower(tf.constant(["a red dog"]))[:, 0])
        grad = tape.gradient(loss, embeddings)
        grad = tf.convert_to_tensor(grad).numpy()
        ids = [VOCAB.index(w) for w in ("a", "red", "dog")]
        assert np.any(grad[ids] != 0)
        others = [i for i in range(len(VOCAB)) if i not in ids]
        assert not np.any(grad[others])

    def test_wrong_word_vectors_shape(self):
        with pytest.raises(ValueError, match="word_vectors has shape"):
            _make_tower(word_vectors=np.zeros((len(VOCAB) + 1, WORD_DIM)))
        with pytest.raises(ValueError, match="word_vectors has shape"):
            _make_tower(word_vectors=np.zeros((len(VOCAB), WORD_DIM + 1)))

    def test_config_round_trip(self, tower):
        config = tower.get_config()
        assert config["vocabulary"] == VOCAB
        assert config["embed_dim"] == EMBED_DIM
        assert config["word_dim"] == WORD_DIM
        assert config["max_length"] == MAX_LENGTH
        assert config["train_word_embeddings"] is False
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(tower)
        )
        assert isinstance(restored, LSTMTextTower)
        assert restored.get_config() == config
        restored(tf.constant(["a"]))
        restored.set_weights(tower.get_weights())
        strings = tf.constant(SENTENCES)
        np.testing.assert_allclose(
            np.asarray(restored(strings)), np.asarray(tower(strings)), atol=1e-6
        )

    def test_keras_file_round_trip(self, tmp_path):
        rng = np.random.default_rng(1)
        vectors = rng.normal(size=(len(VOCAB), WORD_DIM)).astype(np.float32)
        tower = _make_tower(word_vectors=vectors)
        strings = tf.constant(SENTENCES)
        before = np.asarray(tower(strings))
        path = tmp_path / "t.keras"
        tower.save(path)
        loaded = keras.saving.load_model(path)
        assert isinstance(loaded, LSTMTextTower)
        np.testing.assert_array_equal(
            np.asarray(loaded.word_embedding.embeddings), vectors
        )
        np.testing.assert_allclose(np.asarray(loaded(strings)), before, atol=1e-6)
        np.testing.assert_array_equal(
            np.asarray(loaded.tokenizer(strings)), np.asarray(tower.tokenizer(strings))
        )


class TestGRU:
    """``rnn="gru"``: VSE++'s recurrent layer, same interface."""

    def test_gru_tower_encodes_saves_and_matches_fused_path(self, tmp_path):
        tower = _make_tower(rnn="gru")
        assert isinstance(tower.recurrent_layer, keras.layers.GRU)
        assert tower.get_config()["rnn"] == "gru"
        strings = tf.constant(SENTENCES)
        embeddings = np.asarray(tower(strings))
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        ids = tower.tokenizer(strings)
        fused = tower.encode_tokens_fused(ids).numpy()
        np.testing.assert_allclose(fused, embeddings, atol=1e-5)
        path = tmp_path / "gru.keras"
        tower.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.rnn == "gru"
        np.testing.assert_allclose(np.asarray(loaded(strings)), embeddings, atol=1e-6)

    def test_lstm_tower_keeps_its_weight_paths(self, tower):
        # Checkpoints written before the GRU option load into LSTM towers.
        assert tower.recurrent_layer is tower.lstm
        paths = [w.path for w in tower.weights]
        assert any(path.startswith("lstm/") for path in paths), paths

    def test_unknown_rnn(self):
        with pytest.raises(ValueError, match="rnn"):
            _make_tower(rnn="transformer")


class TestPoolingAndBidirectional:
    """``pooling="mean"`` and ``bidirectional``: SCAN's and VSE-infinity's text side."""

    @pytest.mark.parametrize("rnn", ["gru", "lstm"])
    def test_keras_and_fused_paths_agree_with_gradients(self, rnn):
        tower = _make_tower(rnn=rnn, pooling="mean", bidirectional=True)
        ids = tower.tokenizer(tf.constant(SENTENCES))
        weights = tower.trainable_variables
        assert len(weights) == 6  # two layers: kernel, recurrent kernel, bias
        results = []
        for encode in (tower.encode_tokens, tower.encode_tokens_fused):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.sin(3.0 * encode(ids)))
            results.append((encode(ids).numpy(), tape.gradient(loss, weights)))
        (keras_emb, keras_grads), (fused_emb, fused_grads) = results
        np.testing.assert_allclose(_norms(keras_emb), 1.0, atol=1e-5)
        np.testing.assert_allclose(fused_emb, keras_emb, atol=1e-5)
        for got, want in zip(fused_grads, keras_grads):
            scale = np.abs(want).max()
            assert scale > 0
            np.testing.assert_allclose(got, want, atol=1e-5 * max(scale, 1.0))

    def test_bidirectional_mean_is_the_two_directions_averaged_by_hand(self):
        tower = _make_tower(rnn="gru", pooling="mean", bidirectional=True)
        ids = np.array([[3, 5, 7, 0], [4, 0, 0, 0]], np.int32)  # lengths 3, 1
        words = tower.word_embedding(ids).numpy()
        forward = keras.layers.GRU(EMBED_DIM, return_sequences=True)
        backward = keras.layers.GRU(EMBED_DIM, return_sequences=True)
        for layer, source in ((forward, tower.gru), (backward, tower.backward_layer)):
            layer.build((None, None, WORD_DIM))
            layer.set_weights(source.get_weights())
        want = []
        for row, length in zip(words, (3, 1)):
            real = row[None, :length]
            mean_forward = forward(real).numpy()[0].mean(0)
            mean_backward = backward(real[:, ::-1]).numpy()[0].mean(0)
            vector = (mean_forward + mean_backward) / 2
            want.append(vector / np.linalg.norm(vector))
        np.testing.assert_allclose(tower.encode_tokens(ids), want, atol=1e-5)

    def test_word_order_matters_and_padding_does_not(self):
        tower = _make_tower(rnn="gru", pooling="mean", bidirectional=True)
        ids = tf.constant([[3, 5, 7, 0, 0], [7, 5, 3, 0, 0]], tf.int32)
        emb = tower.encode_tokens(ids).numpy()
        assert np.abs(emb[0] - emb[1]).max() > 1e-4
        np.testing.assert_allclose(tower.encode_tokens(ids[:, :3]), emb, atol=1e-6)

    def test_saves_loads_and_names_its_layers(self, tmp_path):
        tower = _make_tower(rnn="gru", pooling="mean", bidirectional=True)
        strings = tf.constant(SENTENCES)
        config = tower.get_config()
        assert (config["pooling"], config["bidirectional"]) == ("mean", True)
        paths = [w.path for w in tower.weights]
        assert any(p.startswith("gru/") for p in paths), paths
        assert any(p.startswith("gru_backward/") for p in paths), paths
        path = tmp_path / "bi.keras"
        tower.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_allclose(loaded(strings), tower(strings), atol=1e-6)

    def test_unknown_pooling(self):
        with pytest.raises(ValueError, match="pooling"):
            _make_tower(pooling="max")
