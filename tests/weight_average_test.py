"""Tests of the weight average: hand-worked updates, the swap, checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from vse_tf.weight_average import WeightAverage


def _variables():
    return [
        tf.Variable([1.0, 2.0], name="w"),
        tf.Variable([[4.0]], name="b"),
    ]


def test_first_update_by_hand():
    variables = _variables()
    average = WeightAverage(variables, decay=0.9)
    variables[0].assign([3.0, 6.0])
    variables[1].assign([[0.0]])
    average.update(variables)
    # d_1 = 2/11: the shadow keeps 2/11 of its start and takes 9/11 of now.
    np.testing.assert_allclose(
        average.shadows[0].numpy(), [2 / 11 * 1 + 9 / 11 * 3, 2 / 11 * 2 + 9 / 11 * 6]
    )
    np.testing.assert_allclose(average.shadows[1].numpy(), [[2 / 11 * 4]])
    assert int(average.updates.numpy()) == 1
    # The variables themselves are untouched.
    np.testing.assert_array_equal(variables[0].numpy(), [3.0, 6.0])


def test_long_run_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    variable = tf.Variable(np.zeros([3], np.float32))
    average = WeightAverage([variable], decay=0.5)
    expected = np.zeros([3])
    for step in range(1, 31):
        value = rng.normal(size=[3]).astype(np.float32)
        variable.assign(value)
        average.update([variable])
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
    np.testing.assert_allclose(average.shadows[0].numpy(), expected, rtol=1e-5)


def test_constant_weights_stay_their_own_average():
    variables = _variables()
    average = WeightAverage(variables, decay=0.999)
    for _ in range(5):
        average.update(variables)
    for shadow, variable in zip(average.shadows, variables):
        np.testing.assert_allclose(shadow.numpy(), variable.numpy(), rtol=1e-6)


def test_swap_exchanges_and_is_its_own_inverse():
    variables = _variables()
    average = WeightAverage(variables, decay=0.9)
    variables[0].assign([10.0, 20.0])
    average.swap(variables)
    np.testing.assert_array_equal(variables[0].numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(average.shadows[0].numpy(), [10.0, 20.0])
    average.swap(variables)
    np.testing.assert_array_equal(variables[0].numpy(), [10.0, 20.0])
    np.testing.assert_array_equal(average.shadows[0].numpy(), [1.0, 2.0])


def test_checkpoint_restores_the_shadows_and_the_count(tmp_path):
    variables = _variables()
    average = WeightAverage(variables, decay=0.9)
    variables[0].assign([3.0, 6.0])
    average.update(variables)
    average.update(variables)
    path = tf.train.Checkpoint(average=average).save(str(tmp_path / "ckpt"))

    restored = WeightAverage(_variables(), decay=0.9)
    tf.train.Checkpoint(average=restored).restore(path).assert_consumed()
    assert int(restored.updates.numpy()) == 2
    for a, b in zip(restored.shadows, average.shadows):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_different_variable_list_is_refused():
    average = WeightAverage(_variables(), decay=0.9)
    with pytest.raises(ValueError, match="1 variables given, 2 averaged"):
        average.update(_variables()[:1])
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        WeightAverage(_variables(), decay=1.0)
