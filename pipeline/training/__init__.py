"""Making the model: the U-net (``unet``), training data and targets (``synthetic``,
``targets``; annotated images come from :mod:`pipeline.io.annotations`), the training loop
(``train``, which may start from an exported model, ``from_onnx``, widened, ``widen``),
snapshot averaging (``average``), threshold tuning (``tune``), ONNX export and context
measurement (``export``), its fp16 and int8 variants (``fp16``, ``int8``) and the stain target
(``stain_target``), with the recipes in ``configs/``. Needs the ``train`` extra (PyTorch); never
imported by a run."""

# Public modules, each a step of making the model (most also run as python -m).
__all__ = [
    "average",
    "export",
    "fp16",
    "from_onnx",
    "int8",
    "stain_target",
    "synthetic",
    "targets",
    "train",
    "tune",
    "unet",
    "widen",
]
