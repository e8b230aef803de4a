"""Image formats and decoding: open any supported image upright, in sRGB, at the model's input size."""
