"""Export: SavedModel for TF Serving and TFLite/LiteRT towers."""
