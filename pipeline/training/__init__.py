"""Making the model: the U-net (``unet``), training data and targets (``synthetic``,
``targets``; annotated images come from :mod:`pipeline.io.annotations`), the training loop
(``train``), snapshot averaging (``average``), threshold tuning (``tune``), ONNX export and
context measurement (``export``, ``fp16``) and the stain target (``stain_target``), with the
recipes in ``configs/``. Needs the ``train`` extra (PyTorch); never imported by a run."""

# Public modules, each a step of making the model (most also run as python -m).
__all__ = ["average", "export", "fp16", "from_onnx", "stain_target", "synthetic", "targets", "train", "tune", "unet"]
