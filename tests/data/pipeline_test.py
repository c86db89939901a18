"""The train pipeline: full epochs, stateless per-epoch order, trimmed batches."""

import numpy as np
import pytest

from vse_tf.data import pipeline


def _arrays(num_captions=12, num_images=4, length=6):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, length, num_captions)
    ids = np.zeros([num_captions, length], np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = 100 + row  # the id tells which caption it is
    owners = np.repeat(np.arange(num_images), num_captions // num_images)
    features = np.arange(num_images, dtype=np.float32)[:, None] * np.ones([1, 3])
    return ids, owners, features


def _batches(dataset, count):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(count)]


def test_each_epoch_visits_every_caption_once_with_its_image():
    ids, owners, features = _arrays()
    dataset, steps = pipeline.train_dataset(
        ids,
        owners,
        batch_size=4,
        seed=1,
        first_epoch=0,
        last_epoch=2,
        image_features=features,
    )
    assert steps == 3
    batches = _batches(dataset, 2 * steps)
    assert len(batches) == 6
    for epoch in range(2):
        seen = np.concatenate(
            [b["token_ids"][:, 0] - 100 for b in batches[epoch * 3 : epoch * 3 + 3]]
        )
        assert sorted(seen) == list(range(12))
    for batch in batches:
        captions = batch["token_ids"][:, 0] - 100
        np.testing.assert_array_equal(batch["image_ids"], owners[captions])
        np.testing.assert_array_equal(batch["image_features"][:, 0], owners[captions])
        # Trimmed to the longest caption of the batch, nothing cut.
        longest = np.count_nonzero(ids[captions], axis=1).max()
        assert batch["token_ids"].shape[1] == longest
    first = np.concatenate([b["token_ids"][:, 0] for b in batches[:3]])
    second = np.concatenate([b["token_ids"][:, 0] for b in batches[3:]])
    assert not np.array_equal(first, second), "epochs must be shuffled differently"


def test_resuming_at_an_epoch_gives_the_same_batches():
    ids, owners, features = _arrays()
    full, steps = pipeline.train_dataset(
        ids, owners, 4, seed=7, first_epoch=0, last_epoch=3, image_features=features
    )
    resumed, _ = pipeline.train_dataset(
        ids, owners, 4, seed=7, first_epoch=2, last_epoch=3, image_features=features
    )
    expected = _batches(full, 3 * steps)[2 * steps :]
    for a, b in zip(expected, _batches(resumed, steps)):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])


def test_seed_changes_the_order():
    ids, owners, features = _arrays()
    a, _ = pipeline.train_dataset(ids, owners, 12, 0, 0, 1, image_features=features)
    b, _ = pipeline.train_dataset(ids, owners, 12, 1, 0, 1, image_features=features)
    assert not np.array_equal(
        _batches(a, 1)[0]["token_ids"][:, 0], _batches(b, 1)[0]["token_ids"][:, 0]
    )


def test_invalid_arguments():
    ids, owners, features = _arrays()
    with pytest.raises(ValueError, match="exactly one"):
        pipeline.train_dataset(ids, owners, 4, 0, 0, 1)
    with pytest.raises(ValueError, match="fill one batch"):
        pipeline.train_dataset(ids, owners, 64, 0, 0, 1, image_features=features)
