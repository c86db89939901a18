"""Text tower: sentences -> words -> GloVe embedding -> LSTM (or GRU) -> unit vector."""

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
    the recurrent layer's state after the last real token.
    ``encode_tokens_fused(token_ids, compute_dtype)``: the same function
    computed by `vse_tf.models.recurrent` (what training uses: faster,
    optionally bf16 matmuls; same weights).

    The recurrent layer is a `keras.layers.LSTM` (the paper's, default) or a
    `keras.layers.GRU` (``rnn="gru"``, VSE++'s; 3 gates instead of 4, so
    a quarter fewer FLOPs); either is attribute ``recurrent_layer``.

    Args:
        vocabulary: Tokens in id order, reserved ones first.
        embed_dim: D (the LSTM size).
        word_dim: Word vector size.
        max_length: Words kept per sentence.
        train_word_embeddings: Whether the (GloVe-initialised) word
            embedding is trained.
        word_vectors: Optional ``[V, word_dim]`` initial word vectors (not
            part of the config; saved with the weights).
        rnn: ``lstm`` or ``gru``.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        embed_dim: int,
        word_dim: int,
        max_length: int,
        train_word_embeddings: bool = False,
        word_vectors: Optional[np.ndarray] = None,
        rnn: str = "lstm",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rnn not in recurrent.CELLS:
            raise ValueError(f"rnn must be one of {recurrent.CELLS}, got {rnn!r}")
        self.rnn = rnn
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
        # The attribute is named after the layer so that checkpoints of
        # LSTM towers keep their variable paths.
        if rnn == "lstm":
            self.lstm = keras.layers.LSTM(embed_dim, name="lstm")
        else:
            self.gru = keras.layers.GRU(embed_dim, name="gru")
        self.normalize = L2Normalize(name="embedding_l2")
        self.word_embedding.build((None, max_length))
        self.recurrent_layer.build((None, max_length, word_dim))
        if word_vectors is not None:
            word_vectors = np.asarray(word_vectors, np.float32)
            if word_vectors.shape != (len(self.vocabulary), word_dim):
                raise ValueError(
                    f"word_vectors has shape {word_vectors.shape}, expected "
                    f"{(len(self.vocabulary), word_dim)}"
                )
            self.word_embedding.embeddings.assign(word_vectors)
        self.built = True  # every sublayer is built above

    @property
    def recurrent_layer(self) -> keras.layers.RNN:
        """The `keras.layers.LSTM` or `keras.layers.GRU`."""
        return self.lstm if self.rnn == "lstm" else self.gru

    def build(self, input_shape=None):
        # Every sublayer is built in __init__ (so saved weights always load).
        self.built = True

    def encode_tokens(self, token_ids, training=False):
        """``int32 [B, L]`` padded token ids -> ``[B, D]`` unit embeddings."""
        words = self.word_embedding(token_ids)
        mask = self.word_embedding.compute_mask(token_ids)
        state = self.recurrent_layer(words, mask=mask, training=training)
        return self.normalize(state)

    def encode_tokens_fused(
        self, token_ids, compute_dtype: str = "float32", packed: bool = True
    ):
        """Like `encode_tokens`, through the fused training LSTM/GRU.

        Args:
            token_ids: ``int32 [B, L]`` right-padded token ids.
            compute_dtype: Matmul input dtype, ``float32`` or ``bfloat16``.
            packed: Run only real tokens (dynamic shapes); False under XLA.

        Returns:
            ``float32 [B, D]`` unit embeddings.
        """
        words = self.word_embedding(token_ids)
        cell = self.recurrent_layer.cell
        state = recurrent.rnn_last_state(
            self.rnn,
            words,
            token_ids > 0,
            cell.kernel,
            cell.recurrent_kernel,
            cell.bias,
            compute_dtype=compute_dtype,
            packed=packed,
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
            rnn=self.rnn,
        )
        return config
