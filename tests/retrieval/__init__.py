"""Tests of vse_tf.retrieval."""
