"""TFLite / LiteRT export of the two towers, and a small runner to check it.

Three models come out of a trained workdir (`export.export_tflite`):

* ``image_tower.tflite``: ``float32 [N, S, S, 3]`` RGB pixels in 0..255 ->
  ``float32 [N, D]`` unit embeddings. VGG preprocessing (RGB -> BGR, Caffe
  mean subtraction) is inside; decoding and resizing to ``S x S`` are not.
* ``text_tower.tflite``: ``int32 [N, L]`` token ids (0-padded, from
  ``vocab.txt`` by the rules of `vse_tf.text`) -> ``float32 [N, D]``. TFLite
  builtin ops only, so stock LiteRT runs it.
* ``text_tower_strings.tflite``: ``string [N]`` raw sentences ->
  ``float32 [N, D]``, tokenised inside by the tensorflow-text TFLite custom
  ops ``FastBertNormalize`` and ``FastWordpieceTokenizeWithOffsets``; the
  runtime must register them (`runner.TFLiteTower` / `runner.run_tflite` do,
  with ``tensorflow_text.core.pybinds.tflite_registrar.SELECT_TFTEXT_OPS``).

Modules, one job each:

* `convert`: Keras towers -> ``.tflite`` bytes (the converter's traps).
* `quantize`: the weight-only int8 recipe, bias correction and selective
  full-integer quantisation (why each recipe is what it is).
* `flatbuffer`: reading a ``.tflite`` flatbuffer: ops, interface, storage.
* `schema`: the flatbuffer schema (TensorFlow's private module, imported
  there only) and reading/writing a model as mutable objects.
* `runner`: `TFLiteTower`, the LiteRT interpreter wrapper.
* `manifest`: the export's file names and its ``manifest.json``.
* `export`: a trained workdir -> the three models, the vocabulary and the
  manifest.
"""
