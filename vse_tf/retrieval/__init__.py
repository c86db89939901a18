"""Retrieval: exact and approximate embedding search, word-embedding tools.

Modules are imported on demand (``from vse_tf.retrieval import search``), so
the optional FAISS dependency of :mod:`vse_tf.retrieval.ann` is only needed
when it is used.
"""
