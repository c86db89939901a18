"""Command-line entry points (absl flags live here, never in `vse_tf`)."""

from vse_tf import quiet

quiet.filter_stderr()  # TensorFlow's C++ and libjpeg noise, for good
quiet.import_tensorflow()
