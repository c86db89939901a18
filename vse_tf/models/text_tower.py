"""Text tower: raw sentences -> words -> GloVe embedding -> LSTM -> unit vector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np

from vse_tf import text as text_lib
from vse_tf.models import recurrent
from vse_tf.models.image_tower import L2Normalize


@keras.saving.register_keras_serializable(package="vse_tf")
class LSTMTextTower(keras.Model):
    """Sentences (or their token ids) -> unit D-dim embeddings.

    ``call(sentences)``: ``tf.string [B]`` -> ``[B, D]``; tokenised in-graph by
    `vse_tf.text.SentenceTokenizer`.
    ``encode_tokens(token_ids)``: ``int32 [B, L]`` (0-padded) -> ``[B, D]``,
    the LSTM's state after the last real token.
    ``encode_tokens_fused(token_ids, compute_dtype)``: the same function
    computed by `vse_tf.models.recurrent.lstm_last_state` (what training
    uses: faster, optionally bf16 matmuls; same weights).

    Args:
        vocabulary: Tokens in id order, reserved ones first.
        embed_dim: D (the LSTM size).
        word_dim: Word vector size.
        max_length: Words kept per sentence.
        train_word_embeddings: Whether the (GloVe-initialised) word
            embedding is trained.
        word_vectors: Optional ``[V, word_dim]`` initial word vectors (not
            part of the config; saved with the weights).
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        embed_dim: int,
        word_dim: int,
        max_length: int,
        train_word_embeddings: bool = False,
        word_vectors: Optional[np.ndarray] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary = list(vocabulary)
        self.embed_dim = embed_dim
        self.word_dim = word_dim
        self.max_length = max_length
        self.train_word_embeddings = train_word_embeddings
        self.tokenizer = text_lib.SentenceTokenizer(
            self.vocabulary, max_length, name="tokenizer"
        )
        self.word_embedding = keras.layers.Embedding(
            len(self.vocabulary),
            word_dim,
            mask_zero=True,
            trainable=train_word_embeddings,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1),
            name="word_embedding",
        )
        self.lstm = keras.layers.LSTM(embed_dim, name="lstm")
        self.normalize = L2Normalize(name="embedding_l2")
        self.word_embedding.build((None, max_length))
        self.lstm.build((None, max_length, word_dim))
        if word_vectors is not None:
            word_vectors = np.asarray(word_vectors, np.float32)
            if word_vectors.shape != (len(self.vocabulary), word_dim):
                raise ValueError(
                    f"word_vectors has shape {word_vectors.shape}, expected "
                    f"{(len(self.vocabulary), word_dim)}"
                )
            self.word_embedding.embeddings.assign(word_vectors)
        self.built = True  # every sublayer is built above

    def build(self, input_shape=None):
        # Every sublayer is built in __init__ (so saved weights always load).
        self.built = True

    def encode_tokens(self, token_ids, training=False):
        """``int32 [B, L]`` padded token ids -> ``[B, D]`` unit embeddings."""
        words = self.word_embedding(token_ids)
        mask = self.word_embedding.compute_mask(token_ids)
        return self.normalize(self.lstm(words, mask=mask, training=training))

    def encode_tokens_fused(self, token_ids, compute_dtype: str = "float32"):
        """Like `encode_tokens`, through the fused training LSTM.

        Args:
            token_ids: ``int32 [B, L]`` padded token ids.
            compute_dtype: Matmul input dtype, ``float32`` or ``bfloat16``.

        Returns:
            ``float32 [B, D]`` unit embeddings.
        """
        words = self.word_embedding(token_ids)
        cell = self.lstm.cell
        state = recurrent.lstm_last_state(
            words,
            token_ids > 0,
            cell.kernel,
            cell.recurrent_kernel,
            cell.bias,
            compute_dtype=compute_dtype,
        )
        return self.normalize(state)

    def call(self, sentences, training=False):
        return self.encode_tokens(self.tokenizer(sentences), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary=self.vocabulary,
            embed_dim=self.embed_dim,
            word_dim=self.word_dim,
            max_length=self.max_length,
            train_word_embeddings=self.train_word_embeddings,
        )
        return config
