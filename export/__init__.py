"""Command-line entry points that export a trained model (absl flags live here).

They share `trainers.cli`. Run from the repository root, the two folders are
the top-level packages ``trainers`` and ``export``; installed, they are
``vse_tf_trainers`` and ``vse_tf_export`` (see pyproject.toml: nothing goes
into site-packages under a generic top-level name), so the sibling package is
named with this package's own prefix.
"""

import importlib

from vse_tf import quiet

quiet.filter_stderr()  # TensorFlow's C++ and libjpeg noise, for good
quiet.import_tensorflow()

cli = importlib.import_module(__name__[: -len("export")] + "trainers.cli")
