"""Feature extraction and index building as Apache Beam pipelines.

The two heavy jobs besides training, on an engine that spreads them over
many machines (Dataflow, Flink, Spark) or over local processes: `extract`
(image files -> the CNN feature cache `trainers.train` reads) and `index`
(an exported SavedModel + images or captions -> the index `vse-search`
reads). Both write through `vse_tf.shard_store`, so their outputs are the
files the in-process paths write, and a killed run resumes.

Beam is an optional dependency (``pip install -e ".[beam]"``, in a venv of
its own: it caps protobuf < 7, pyarrow < 26 and numpy < 2.5); nothing here
imports it until a pipeline runs.
"""

from vse_tf.pipelines.runners import LOCAL, RUNNERS  # noqa: F401
