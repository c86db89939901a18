"""Tests for vse_tf.models.ensemble: K towers side by side, one space."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vse_tf.models.ensemble import EnsembleImageTower, EnsembleTextTower
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.text import Vocabulary

VOCAB = Vocabulary(["a", "red", "blue", "square", "stripe"]).tokens
SENTENCES = tf.constant(["a red square", "blue stripe", ""])


def _image_tower(seed, dim, size=32):
    keras.utils.set_random_seed(seed)
    return ImageTower(embed_dim=dim, image_size=size, vgg_weights="none")


def _text_tower(seed, dim, vocabulary=VOCAB, rnn="lstm"):
    keras.utils.set_random_seed(seed)
    return LSTMTextTower(vocabulary, embed_dim=dim, word_dim=4, max_length=6, rnn=rnn)


def test_scores_are_the_mean_of_the_members_cosines():
    images = [_image_tower(0, 8), _image_tower(1, 4)]
    texts = [_text_tower(2, 8), _text_tower(3, 4, rnn="gru")]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    image_emb = EnsembleImageTower(images)(pixels).numpy()
    text_emb = EnsembleTextTower(texts)(SENTENCES).numpy()
    assert image_emb.shape == (2, 12) and text_emb.shape == (3, 12)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-5)
    members = [
        images[k](pixels).numpy() @ texts[k](SENTENCES).numpy().T for k in range(2)
    ]
    np.testing.assert_allclose(
        image_emb @ text_emb.T, (members[0] + members[1]) / 2, atol=1e-6
    )
    tokens = texts[0].tokenizer(SENTENCES)
    np.testing.assert_allclose(
        EnsembleTextTower(texts).encode_tokens(tokens), text_emb, atol=1e-6
    )


def test_members_must_fit_together():
    with pytest.raises(ValueError, match="at least two"):
        EnsembleImageTower([_image_tower(0, 4)])
    with pytest.raises(ValueError, match="different image sizes"):
        EnsembleImageTower([_image_tower(0, 4), _image_tower(0, 4, size=64)])
    other = Vocabulary(["a", "green", "circle"]).tokens
    with pytest.raises(ValueError, match="different vocabularies"):
        EnsembleTextTower([_text_tower(0, 4), _text_tower(0, 4, vocabulary=other)])
    head = ImageTower(embed_dim=4, image_size=32, include_backbone=False)
    with pytest.raises(ValueError, match="needs its CNN"):
        EnsembleImageTower([_image_tower(0, 4), head])


def test_config_round_trip():
    tower = EnsembleTextTower([_text_tower(0, 4), _text_tower(1, 4)])
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(tower)
    )
    assert isinstance(restored, EnsembleTextTower)
    assert restored.embed_dim == 8 and len(restored.members) == 2
