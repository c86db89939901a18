"""Scores any embedder (an export, a server, a workdir) with the papers' protocol.

The protocol is the one training selects on (`vse_tf.metrics`): each image
with its first 5 captions; R@1/5/10 and median rank for image->text and
text->image; rsum. Here the images go through the model as files (JPEG/PNG
bytes), as a deployed model sees them, so the numbers check an export end to
end.
"""

from __future__ import annotations

from typing import Any

from vse_tf import config as config_lib
from vse_tf import metrics as metrics_lib
from vse_tf import train_lib


def evaluate_embedder(
    embedder: Any,
    config: config_lib.Config,
    split: str = "dev",
    batch_size: int = 32,
    verbose: bool = True,
) -> dict[str, float]:
    """Encodes a split's images and captions with ``embedder``; returns metrics.

    Args:
        embedder: A `vse_tf.Embedder` (anything with ``encode_images(paths)``
            and ``encode_texts(sentences)`` returning ``[N, D]`` unit rows).
        config: Where the data come from (``config.data``: dataset,
            data_dir, max_eval_images, and for the demo its size and seed).
        split: ``dev`` or ``test``.
        batch_size: Images per encoder call.
        verbose: Print the table.

    Returns:
        ``{i2t_r1, ..., rsum}`` (see `vse_tf.metrics.retrieval_metrics`).

    Raises:
        errors.ConfigError: for an invalid config.
        readers.DataError: for bad annotations, or images with fewer than
            5 captions.
    """
    config_lib.validate(config)
    view = train_lib.evaluation_view(train_lib.load_split(config, split))
    image_emb = embedder.encode_images(view.image_paths, batch_size=batch_size)
    caption_emb = embedder.encode_texts(view.captions)
    values = metrics_lib.retrieval_metrics(
        image_emb, caption_emb, train_lib.CAPTIONS_PER_IMAGE
    )
    if verbose:
        title = f"{split} ({view.num_images} images, {getattr(embedder, 'source', '')})"
        print(metrics_lib.format_table(values, title))
    return values
