"""Command-line entry points (absl flags live here, never in `vse_tf`)."""

from vse_tf import quiet

quiet.import_tensorflow()
