"""Hinge-based triplet ranking losses for visual-semantic embeddings.

The loss follows Kiros et al. (2014) and Faghri et al. (VSE++, 2018). Row ``i`` of
the image batch and row ``i`` of the text batch form a positive pair; every other
row of the other modality is a contrastive (negative) example, unless it shares an
image id with the query.
"""

from __future__ import annotations

from typing import Optional, Union

import tensorflow as tf

LOSS_MODES = ("sum", "max")
"""Accepted values of ``ranking_loss(mode=...)``."""


def similarity_matrix(image_emb: tf.Tensor, text_emb: tf.Tensor) -> tf.Tensor:
    """Pairwise similarities between every image and every text in a batch.

    With L2-normalised inputs these are cosine similarities.

    Args:
        image_emb: Image embeddings, shape ``[B, D]``, any float dtype.
        text_emb: Text embeddings, shape ``[B', D]``, any float dtype.

    Returns:
        ``S`` of shape ``[B, B']`` and dtype float32, with
        ``S[i, k] = <image_emb[i], text_emb[k]>``.
    """
    image_emb = tf.cast(image_emb, tf.float32)
    text_emb = tf.cast(text_emb, tf.float32)
    return tf.matmul(image_emb, text_emb, transpose_b=True)


def ranking_loss(
    image_emb: tf.Tensor,
    text_emb: tf.Tensor,
    margin: Union[float, tf.Tensor] = 0.2,
    mode: str = "sum",
    image_ids: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """Bidirectional hinge-based triplet ranking loss (VSE0 / VSE++).

    With ``S = image_emb @ text_emb^T`` (shape ``[B, B]``) and ``N(i)`` the set of
    negatives for row ``i`` (every ``k != i``, minus those with
    ``image_ids[k] == image_ids[i]`` when ids are given), ``mode="sum"`` computes::

        L = sum_i sum_{k in N(i)} max(0, margin - S[i, i] + S[i, k])   # image query
          + sum_j sum_{k in N(j)} max(0, margin - S[j, j] + S[k, j])   # text query

    and ``mode="max"`` (VSE++ "max of hinges") keeps only the hardest negative of
    each positive pair in each direction::

        L = sum_i max_{k in N(i)} max(0, margin - S[i, i] + S[i, k])
          + sum_j max_{k in N(j)} max(0, margin - S[j, j] + S[k, j])

    The loss is summed over the batch, not averaged. A positive with no negatives
    (e.g. every id in the batch equal) contributes 0.

    Args:
        image_emb: L2-normalised image embeddings, shape ``[B, D]``. Any float dtype
            (bfloat16 and float16 included); computation is done in float32.
        text_emb: L2-normalised text embeddings, shape ``[B, D]``; row ``i`` is the
            positive caption for ``image_emb[i]``.
        margin: Hinge margin ``alpha``.
        mode: ``"sum"`` (sum over all negatives) or ``"max"`` (hardest negative).
        image_ids: Optional integer image ids, shape ``[B]``. Pairs ``(i, k)`` with
            equal ids are not treated as negatives, including when choosing the
            hardest negative. The diagonal is always excluded.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: If ``mode`` is not one of ``LOSS_MODES``.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")

    scores = similarity_matrix(image_emb, text_emb)  # [B, B]
    margin = tf.cast(margin, tf.float32)
    positives = tf.linalg.diag_part(scores)  # [B]

    # cost_text[i, k]: image i is the query, caption k a contrastive caption.
    cost_text = tf.nn.relu(margin - positives[:, None] + scores)
    # cost_image[k, j]: caption j is the query, image k a contrastive image.
    cost_image = tf.nn.relu(margin - positives[None, :] + scores)

    batch = tf.shape(scores)[0]
    if image_ids is None:
        not_negative = tf.eye(batch, dtype=tf.bool)
    else:
        ids = tf.reshape(image_ids, [-1])
        not_negative = tf.logical_or(
            tf.equal(ids[:, None], ids[None, :]), tf.eye(batch, dtype=tf.bool)
        )
    zeros = tf.zeros_like(scores)
    cost_text = tf.where(not_negative, zeros, cost_text)
    cost_image = tf.where(not_negative, zeros, cost_image)

    if mode == "max":
        # Hinges are >= 0, so masked entries (0) never beat a real negative.
        cost_text = tf.reduce_max(cost_text, axis=1)
        cost_image = tf.reduce_max(cost_image, axis=0)

    return tf.reduce_sum(cost_text) + tf.reduce_sum(cost_image)


MIN_TEMPERATURE = 0.01
"""CLIP's clamp: the logit scale ``1 / temperature`` never exceeds 100."""
MAX_TEMPERATURE = 1.0


def infonce_loss(
    image_emb: tf.Tensor,
    text_emb: tf.Tensor,
    temperature: Union[float, tf.Tensor] = 0.07,
    image_ids: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """Symmetric softmax contrastive loss (InfoNCE, as in CLIP and TFRS retrieval).

    With ``S = image_emb @ text_emb^T`` (``[B, B]``), ``t`` the temperature
    clamped to ``[MIN_TEMPERATURE, MAX_TEMPERATURE]`` and ``N(i)`` the
    in-batch negatives of row ``i`` (every ``k != i``, minus those with
    ``image_ids[k] == image_ids[i]`` when ids are given)::

        L_i2t(i) = -S[i,i]/t + log(exp(S[i,i]/t) + sum_{k in N(i)} exp(S[i,k]/t))
        L_t2i(j) = -S[j,j]/t + log(exp(S[j,j]/t) + sum_{k in N(j)} exp(S[k,j]/t))
        L = (mean_i L_i2t(i) + mean_j L_t2i(j)) / 2

    Unlike `ranking_loss` it is a mean, not a sum, over the batch (CLIP's
    convention). Captions of the same image are masked out of each other's
    denominators rather than treated as negatives.

    Args:
        image_emb: L2-normalised image embeddings, ``[B, D]``, any float dtype.
        text_emb: L2-normalised text embeddings, ``[B, D]``; row ``i`` is the
            positive of ``image_emb[i]``.
        temperature: Softmax temperature (a float or a scalar tensor, e.g. a
            learnt one); clamped as above.
        image_ids: Optional integer image ids ``[B]``.

    Returns:
        Scalar float32 loss.
    """
    scores = similarity_matrix(image_emb, text_emb)  # [B, B]
    temperature = tf.clip_by_value(
        tf.cast(temperature, tf.float32), MIN_TEMPERATURE, MAX_TEMPERATURE
    )
    logits = scores / temperature
    batch = tf.shape(scores)[0]
    if image_ids is not None:
        ids = tf.reshape(image_ids, [-1])
        same_image = tf.logical_and(
            tf.equal(ids[:, None], ids[None, :]),
            tf.logical_not(tf.eye(batch, dtype=tf.bool)),
        )
        logits = tf.where(same_image, tf.fill(tf.shape(logits), -1e9), logits)
    labels = tf.range(batch)
    image_to_text = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    text_to_image = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, tf.transpose(logits)
    )
    return 0.5 * (tf.reduce_mean(image_to_text) + tf.reduce_mean(text_to_image))
