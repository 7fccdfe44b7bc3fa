"""A float16 variant of a contract ONNX model, with float32 input and output (the model contract unchanged).

    python -m pipeline.training.fp16 pipeline/runtime/weights/nuclei_unet.onnx nuclei_unet.fp16.onnx

Weights and activations in float16 halve memory traffic and use tensor cores on a GPU
(onnxruntime's CUDA/TensorRT providers, or the torch runtime). The conversion casts every
floating initializer and Constant to float16 (saturating at ±65504), puts a ``Cast`` after the
``image`` input and before the ``prob`` output, and records ``precision=fp16`` and the source's
sha256 in metadata_props. Inputs of Resize/Upsample that must stay float32 (roi, scales) are kept.
onnxconverter-common does the same more generally; it is not a dependency.

The torch runtime's ``half=True`` gives the same arithmetic without a second file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FP16_MAX = 65504.0
_KEEP_FLOAT32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # roi, scales


def convert_to_fp16(source: Path, target: Path) -> Path:
    """Write the float16 variant of ``source`` to ``target``; returns ``target``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.runtime.session import file_sha256

    model = onnx.load(str(source))
    graph = model.graph
    keep = {
        node.input[i] for node in graph.node for i in _KEEP_FLOAT32_INPUTS.get(node.op_type, ()) if i < len(node.input)
    }

    def half(tensor: onnx.TensorProto) -> onnx.TensorProto:
        if tensor.data_type != TensorProto.FLOAT or tensor.name in keep:
            return tensor
        values = np.clip(numpy_helper.to_array(tensor), -FP16_MAX, FP16_MAX).astype(np.float16)
        return numpy_helper.from_array(values, tensor.name)

    converted = [half(t) for t in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(converted)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(half(attr.t))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16

    (inp,) = [i for i in graph.input if i.name == "image"]
    (out,) = [o for o in graph.output if o.name == "prob"]
    for node in graph.node:
        node.input[:] = ["image_fp16" if n == "image" else n for n in node.input]
        node.output[:] = ["prob_fp16" if n == "prob" else n for n in node.output]
    cast_in = helper.make_node("Cast", ["image"], ["image_fp16"], to=TensorProto.FLOAT16, name="image_to_fp16")
    cast_out = helper.make_node("Cast", ["prob_fp16"], ["prob"], to=TensorProto.FLOAT, name="prob_to_fp32")
    nodes = [cast_in, *graph.node, cast_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # intermediate types changed; shape inference recomputes them
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT and out.type.tensor_type.elem_type == TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({"precision": "fp16", "fp32_source_sha256": file_sha256(source)})
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the float16 variant of a contract ONNX model.")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    print(convert_to_fp16(args.source, args.target))


if __name__ == "__main__":
    main()
