"""The train pipeline: full epochs, stateless per-epoch order, trimmed batches."""

import numpy as np
import pytest
import tensorflow as tf

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


def _on_features(features, ids, owners, batch_size, seed, epochs, **options):
    """`pipeline.train_dataset` on cached ``features``, epochs ``range(*epochs)``."""
    return pipeline.train_dataset(
        ids,
        owners,
        batch_size,
        seed=seed,
        first_epoch=epochs[0],
        last_epoch=epochs[1],
        image_features=features,
        **options,
    )


def test_each_epoch_visits_every_caption_once_with_its_image():
    ids, owners, features = _arrays()
    dataset, steps = _on_features(features, ids, owners, 4, seed=1, epochs=(0, 2))
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
    full, steps = _on_features(features, ids, owners, 4, seed=7, epochs=(0, 3))
    resumed, _ = _on_features(features, ids, owners, 4, seed=7, epochs=(2, 3))
    expected = _batches(full, 3 * steps)[2 * steps :]
    for a, b in zip(expected, _batches(resumed, steps)):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])


def test_seed_changes_the_order():
    ids, owners, features = _arrays()
    a, _ = _on_features(features, ids, owners, 12, seed=0, epochs=(0, 1))
    b, _ = _on_features(features, ids, owners, 12, seed=1, epochs=(0, 1))
    assert not np.array_equal(
        _batches(a, 1)[0]["token_ids"][:, 0], _batches(b, 1)[0]["token_ids"][:, 0]
    )


def test_invalid_arguments():
    ids, owners, features = _arrays()
    with pytest.raises(ValueError, match="exactly one"):
        pipeline.train_dataset(ids, owners, 4, 0, 0, 1)
    with pytest.raises(ValueError, match="fill one batch"):
        pipeline.train_dataset(ids, owners, 64, 0, 0, 1, image_features=features)


def _long_arrays(num_captions=256, num_images=64, length=20):
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, length + 1, num_captions)
    ids = np.zeros([num_captions, length], np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = 1000 + row
    owners = np.repeat(np.arange(num_images), num_captions // num_images)
    features = np.arange(num_images, dtype=np.float32)[:, None] * np.ones([1, 3])
    return ids, owners, features, lengths


def test_length_buckets_cover_the_epoch_and_cut_padding():
    ids, owners, features, lengths = _long_arrays()
    batch_size = 8
    plain, steps = _on_features(features, ids, owners, batch_size, 2, (0, 1))
    bucketed, bucketed_steps = _on_features(
        features, ids, owners, batch_size, 2, (0, 1), bucket_by_length=True
    )
    assert steps == bucketed_steps == 32
    plain_batches = _batches(plain, steps)
    batches = _batches(bucketed, steps)

    # The same examples (the same ones dropped by the last partial batch).
    def seen(bs):
        return sorted(np.concatenate([b["token_ids"][:, 0] for b in bs]))

    assert seen(batches) == seen(plain_batches)
    for batch in batches:
        captions = batch["token_ids"][:, 0] - 1000
        np.testing.assert_array_equal(batch["image_ids"], owners[captions])
        assert batch["token_ids"].shape[1] == lengths[captions].max()

    # Padding: token slots per real token, bucketed vs plain.
    def padded(bs):
        return sum(b["token_ids"].size for b in bs)

    assert padded(batches) < 0.75 * padded(plain_batches)
    # Batches are not simply emitted shortest first.
    longest = [b["token_ids"].shape[1] for b in batches]
    assert longest != sorted(longest)


def test_length_buckets_are_deterministic_per_seed_and_epoch():
    ids, owners, features, _ = _long_arrays()

    def run(seed, first_epoch):
        dataset, _ = _on_features(
            features, ids, owners, 8, seed, (first_epoch, 2), bucket_by_length=True
        )
        return [b["token_ids"][:, 0] for b in _batches(dataset, 64)]

    full = run(5, 0)
    resumed = run(5, 1)
    assert len(full) == 64 and len(resumed) == 32
    for a, b in zip(full[32:], resumed):
        np.testing.assert_array_equal(a, b)
    other = run(6, 0)
    assert not all(np.array_equal(a, b) for a, b in zip(full, other))


def test_hard_negative_flag_follows_the_epoch():
    ids, owners, features = _arrays()
    dataset, steps = _on_features(
        features, ids, owners, 4, seed=1, epochs=(0, 3), hard_negatives_from_epoch=1
    )
    flags = [b["hard_negatives"] for b in _batches(dataset, 3 * steps)]
    assert all(f.shape == (4,) and f.dtype == np.int32 for f in flags)
    assert [bool(f.all()) for f in flags] == [False] * 3 + [True] * 6
    assert [bool(f.any()) for f in flags] == [False] * 3 + [True] * 6
    plain, _ = _on_features(features, ids, owners, 4, seed=1, epochs=(0, 1))
    assert "hard_negatives" not in _batches(plain, 1)[0]


def test_feature_views_are_drawn_per_caption_and_epoch():
    ids, owners, features = _arrays(num_captions=240, num_images=48)
    # View v of image i is the row (i + 1000 v): both are recoverable.
    views = np.stack([features, features + 1000.0])
    dataset, steps = _on_features(views, ids, owners, 16, seed=5, epochs=(0, 3))
    batches = _batches(dataset, 3 * steps)
    drawn = {}
    for epoch in range(3):
        for batch in batches[epoch * steps : (epoch + 1) * steps]:
            captions = batch["token_ids"][:, 0] - 100
            image, view = (
                batch["image_features"][:, 0] % 1000,
                batch["image_features"][:, 0] // 1000,
            )
            np.testing.assert_array_equal(image, owners[captions])
            for caption, v in zip(captions, view):
                drawn[(epoch, int(caption))] = int(v)
    # Both views are used, about half each, and the draw changes per epoch.
    share = np.mean(list(drawn.values()))
    assert 0.35 < share < 0.65, share
    per_epoch = [[drawn[(e, c)] for c in range(240)] for e in range(3)]
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]
    # A resumed run draws the same views.
    resumed, _ = _on_features(views, ids, owners, 16, seed=5, epochs=(2, 3))
    for a, b in zip(batches[2 * steps :], _batches(resumed, steps)):
        np.testing.assert_array_equal(a["image_features"], b["image_features"])
    # One view is the plain [N, F] case.
    single, _ = _on_features(views[:1], ids, owners, 16, seed=5, epochs=(0, 1))
    plain, _ = _on_features(features, ids, owners, 16, seed=5, epochs=(0, 1))
    for a, b in zip(_batches(single, steps), _batches(plain, steps)):
        np.testing.assert_array_equal(a["image_features"], b["image_features"])
    with pytest.raises(ValueError, match=r"\[V, N, F\]"):
        pipeline.train_dataset(ids, owners, 16, 0, 0, 1, image_features=features[0])


def test_image_paths_are_decoded_per_batch(tmp_path):
    ids, owners, _ = _arrays()
    paths = []
    for i in range(4):
        pixels = np.full([6, 6, 3], 10 * (i + 1), np.uint8)
        path = str(tmp_path / f"{i}.png")
        tf.io.write_file(path, tf.io.encode_png(pixels))
        paths.append(path)
    dataset, steps = pipeline.train_dataset(
        ids, owners, 4, 1, 0, 1, image_paths=paths, image_size=6
    )
    assert steps == 3
    for batch in _batches(dataset, steps):
        assert batch["images"].shape == (4, 6, 6, 3)
        assert "image_features" not in batch
        np.testing.assert_allclose(
            batch["images"][:, 0, 0, 0], 10.0 * (batch["image_ids"] + 1)
        )
