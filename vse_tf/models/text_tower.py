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
    the sentence vector (pooled as below).
    ``encode_tokens_fused(token_ids, compute_dtype)``: the same function
    computed by `vse_tf.models.recurrent` (what training uses: faster,
    optionally bf16 matmuls; same weights).

    The recurrent layer is a `keras.layers.LSTM` (the paper's, default) or a
    `keras.layers.GRU` (``rnn="gru"``, VSE++'s; 3 gates instead of 4, so
    a quarter fewer FLOPs); either is attribute ``recurrent_layer``.

    The sentence vector is the state after the last word (``pooling="last"``,
    the paper's) or the mean of the states after each word (``"mean"``, as
    SCAN and VSE-infinity pool). ``bidirectional`` adds a second layer of
    the same kind (``backward_layer``) that reads each sentence from its last
    word to its first; the vector is the mean of the two directions' (SCAN,
    VSE-infinity).

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
        pooling: ``last`` or ``mean`` (`vse_tf.models.recurrent.POOLINGS`).
        bidirectional: Also read each sentence backwards.
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
        pooling: str = "last",
        bidirectional: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rnn not in recurrent.CELLS:
            raise ValueError(f"rnn must be one of {recurrent.CELLS}, got {rnn!r}")
        if pooling not in recurrent.POOLINGS:
            raise ValueError(
                f"pooling must be one of {recurrent.POOLINGS}, got {pooling!r}"
            )
        self.rnn = rnn
        self.pooling = pooling
        self.bidirectional = bidirectional
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
        layer_class = keras.layers.LSTM if rnn == "lstm" else keras.layers.GRU
        sequences = pooling == "mean"
        setattr(self, rnn, layer_class(embed_dim, return_sequences=sequences, name=rnn))
        self.backward_layer = None
        if bidirectional:
            self.backward_layer = layer_class(
                embed_dim, return_sequences=sequences, name=f"{rnn}_backward"
            )
        self.normalize = L2Normalize(name="embedding_l2")
        self.word_embedding.build((None, max_length))
        for layer in self.directions:
            layer.build((None, max_length, word_dim))
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
        """The `keras.layers.LSTM` or `keras.layers.GRU` (forward direction)."""
        return self.lstm if self.rnn == "lstm" else self.gru

    @property
    def directions(self) -> list[keras.layers.RNN]:
        """The recurrent layers: forward, then backward when bidirectional."""
        if self.backward_layer is None:
            return [self.recurrent_layer]
        return [self.recurrent_layer, self.backward_layer]

    def _combine(self, token_ids, encode_direction):
        """The unit embedding: each direction's pooled states, averaged.

        ``encode_direction(layer, words, mask)`` -> ``[B, D]`` pools one
        direction; the backward one reads `recurrent.reverse_padded` words.
        """
        words = self.word_embedding(token_ids)
        mask = token_ids > 0
        states = [encode_direction(self.recurrent_layer, words, mask)]
        if self.backward_layer is not None:
            reversed_words = recurrent.reverse_padded(words, mask)
            states.append(encode_direction(self.backward_layer, reversed_words, mask))
        state = states[0] if len(states) == 1 else (states[0] + states[1]) / 2.0
        return self.normalize(state)

    def build(self, input_shape=None):
        # Every sublayer is built in __init__ (so saved weights always load).
        self.built = True

    def encode_tokens(self, token_ids, training=False):
        """``int32 [B, L]`` padded token ids -> ``[B, D]`` unit embeddings."""

        def encode(layer, words, mask):
            states = layer(words, mask=mask, training=training)
            if self.pooling == "last":
                return states
            weights = keras.ops.cast(mask, states.dtype)[:, :, None]
            total = keras.ops.sum(states * weights, axis=1)
            return total / keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)

        return self._combine(token_ids, encode)

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

        def encode(layer, words, mask):
            return recurrent.rnn_last_state(
                self.rnn,
                words,
                mask,
                layer.cell.kernel,
                layer.cell.recurrent_kernel,
                layer.cell.bias,
                compute_dtype=compute_dtype,
                packed=packed,
                pooling=self.pooling,
            )

        return self._combine(token_ids, encode)

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
            pooling=self.pooling,
            bidirectional=self.bidirectional,
        )
        return config
