"""Run the contract ONNX model with PyTorch: the GPU path where onnxruntime-gpu cannot be had.

A small interpreter of ONNX graphs over ``torch.nn.functional``: it covers the operators our
exported U-net (:mod:`pipeline.training.export`) and the test blob model
(:func:`pipeline.testing.build_blob_model`) use, plus the usual companions of such graphs, and
raises :class:`UnsupportedOperator` naming any other operator when the model is loaded, never in
the middle of a slide. The same ``.onnx`` file, hence the same sha256 in run.json, runs on either
runtime.

Tensors stay where they are: :meth:`TorchOnnxModel.run` takes and returns ``torch.Tensor`` on the
model's device, and :meth:`TorchOnnxModel.run_dlpack` takes any DLPack array (cupy on a GPU, numpy
on the CPU) and returns one of the same library without a copy, so probabilities never visit the
host between inference and the watershed. ``half=True`` runs in float16 (inputs and outputs stay
float32, as the contract says); ``channels_last`` uses the NHWC memory layout that tensor cores
prefer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812


class UnsupportedOperator(Exception):
    """The ONNX graph uses an operator (or an attribute of one) this interpreter does not cover."""


Attrs = dict[str, Any]
OpFn = Callable[[list[Any], Attrs], list[Any]]


def _pads_2d(attrs: Attrs, op: str) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right] (2-D); auto_pad other than NOTSET/VALID is refused."""
    auto = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto not in ("NOTSET", "VALID"):
        raise UnsupportedOperator(f"{op} with auto_pad={auto}")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise UnsupportedOperator(f"{op} on other than 2-D images (pads={pads})")
    return pads[0], pads[1], pads[2], pads[3]


def _conv(inputs: list[Any], attrs: Attrs) -> list[Any]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    top, left, bottom, right = _pads_2d(attrs, "Conv")
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return [
        F.conv2d(
            x,
            w,
            b,
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=(top, left),
            dilation=tuple(attrs.get("dilations", [1, 1])),
            groups=int(attrs.get("group", 1)),
        )
    ]


def _conv_transpose(inputs: list[Any], attrs: Attrs) -> list[Any]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    if "output_shape" in attrs:
        raise UnsupportedOperator("ConvTranspose with output_shape")
    top, left, bottom, right = _pads_2d(attrs, "ConvTranspose")
    y = F.conv_transpose2d(
        x,
        w,
        b,
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=0,
        output_padding=tuple(attrs.get("output_padding", [0, 0])),
        groups=int(attrs.get("group", 1)),
        dilation=tuple(attrs.get("dilations", [1, 1])),
    )
    if top or left or bottom or right:  # ONNX pads crop the full transposed output
        y = y[..., top : y.shape[-2] - bottom, left : y.shape[-1] - right]
    return [y]


def _max_pool(inputs: list[Any], attrs: Attrs) -> list[Any]:
    top, left, bottom, right = _pads_2d(attrs, "MaxPool")
    x = inputs[0]
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        top = left = 0
    if attrs.get("storage_order", 0):
        raise UnsupportedOperator("MaxPool with storage_order=1")
    return [
        F.max_pool2d(
            x,
            kernel_size=tuple(attrs["kernel_shape"]),
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=(top, left),
            dilation=tuple(attrs.get("dilations", [1, 1])),
            ceil_mode=bool(attrs.get("ceil_mode", 0)),
        )
    ]


def _average_pool(inputs: list[Any], attrs: Attrs) -> list[Any]:
    top, left, bottom, right = _pads_2d(attrs, "AveragePool")
    if (top, left) != (bottom, right):
        raise UnsupportedOperator("AveragePool with asymmetric pads")
    return [
        F.avg_pool2d(
            inputs[0],
            kernel_size=tuple(attrs["kernel_shape"]),
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=(top, left),
            ceil_mode=bool(attrs.get("ceil_mode", 0)),
            count_include_pad=bool(attrs.get("count_include_pad", 0)),
        )
    ]


def _batch_norm(inputs: list[Any], attrs: Attrs) -> list[Any]:
    x, scale, bias, mean, var = inputs[:5]
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(attrs.get("epsilon", 1e-5)))]


def _concat(inputs: list[Any], attrs: Attrs) -> list[Any]:
    return [torch.cat(inputs, dim=int(attrs["axis"]))]


def _resize(inputs: list[Any], attrs: Attrs) -> list[Any]:
    """Resize (opset ≥ 11: X, roi, scales, sizes) and Upsample (X, scales), 4-D, nearest/linear."""
    x = inputs[0]
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = attrs.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    scales = sizes = None
    if len(inputs) == 2:  # Upsample
        scales = inputs[1]
    else:
        scales = inputs[2] if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel() else None
        sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None and inputs[3].numel() else None
    if sizes is not None:
        size = tuple(int(s) for s in sizes.tolist()[2:])
        kwargs: dict[str, Any] = {"size": size}
    else:
        assert scales is not None
        s = [float(v) for v in scales.tolist()]
        if s[0] != 1 or s[1] != 1:
            raise UnsupportedOperator("Resize over the batch or channel axis")
        kwargs = {"scale_factor": (s[2], s[3])}
    if mode == "nearest":
        nearest = attrs.get("nearest_mode", b"round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if ctm == "asymmetric" and nearest == "floor":
            return [F.interpolate(x, mode="nearest", **kwargs)]
        if (
            ctm in ("half_pixel", "pytorch_half_pixel")
            and "scale_factor" in kwargs
            and all(float(v).is_integer() for v in kwargs["scale_factor"])
        ):
            return [F.interpolate(x, mode="nearest", **kwargs)]  # integer up-sampling: same pixels
        raise UnsupportedOperator(f"Resize nearest with coordinate_transformation_mode={ctm}, nearest_mode={nearest}")
    if mode == "linear":
        if ctm == "align_corners":
            return [F.interpolate(x, mode="bilinear", align_corners=True, **kwargs)]
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return [F.interpolate(x, mode="bilinear", align_corners=False, **kwargs)]
        raise UnsupportedOperator(f"Resize linear with coordinate_transformation_mode={ctm}")
    raise UnsupportedOperator(f"Resize mode={mode}")


def _reshape(inputs: list[Any], attrs: Attrs) -> list[Any]:
    shape = [int(v) for v in inputs[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [inputs[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [inputs[0].reshape(shape)]


def _shape(inputs: list[Any], attrs: Attrs) -> list[Any]:
    shape = list(inputs[0].shape)[int(attrs.get("start", 0)) : attrs.get("end")]
    return [torch.tensor(shape, dtype=torch.int64)]


def _cast(inputs: list[Any], attrs: Attrs) -> list[Any]:
    from onnx import TensorProto

    types: dict[int, torch.dtype] = {
        int(TensorProto.FLOAT): torch.float32,
        int(TensorProto.FLOAT16): torch.float16,
        int(TensorProto.BFLOAT16): torch.bfloat16,
        int(TensorProto.INT64): torch.int64,
        int(TensorProto.INT32): torch.int32,
        int(TensorProto.BOOL): torch.bool,
    }
    to = types.get(int(attrs["to"]))
    if to is None:
        raise UnsupportedOperator(f"Cast to ONNX type {attrs['to']}")
    return [inputs[0].to(to)]


OPS: dict[str, OpFn] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "BatchNormalization": _batch_norm,
    "Concat": _concat,
    "Resize": _resize,
    "Upsample": _resize,
    "Reshape": _reshape,
    "Shape": _shape,
    "Cast": _cast,
    "Relu": lambda i, a: [F.relu(i[0])],
    "LeakyRelu": lambda i, a: [F.leaky_relu(i[0], float(a.get("alpha", 0.01)))],
    "Sigmoid": lambda i, a: [torch.sigmoid(i[0])],
    "Tanh": lambda i, a: [torch.tanh(i[0])],
    "Identity": lambda i, a: [i[0]],
    "Add": lambda i, a: [i[0] + i[1]],
    "Sub": lambda i, a: [i[0] - i[1]],
    "Mul": lambda i, a: [i[0] * i[1]],
    "Div": lambda i, a: [i[0] / i[1]],
    "Flatten": lambda i, a: [torch.flatten(i[0], int(a.get("axis", 1)))],
}


def release_after_last_use(nodes: list[tuple[OpFn, list[str], list[str], Attrs]], keep: set[str]) -> list[list[str]]:
    """For each node, the values to drop once it has run: those no later node reads (their last
    reader, or the node that made them when nothing reads them), except ``keep`` (weights,
    constants, the graph's outputs). Without this every activation of a run stays alive to its
    end: ~1.6 kB per input pixel for the shipped U-net instead of the few maps live at once.

    >>> f = None
    >>> release_after_last_use([(f, ["x"], ["a"], {}), (f, ["a"], ["b"], {}), (f, ["a", "b"], ["y"], {})], {"y"})
    [['x'], [], ['a', 'b']]
    """
    last: dict[str, int] = {}
    for i, (_, names_in, names_out, _) in enumerate(nodes):
        for name in names_out:
            last.setdefault(name, i)
        for name in names_in:
            if name:
                last[name] = i
    done: list[list[str]] = [[] for _ in nodes]
    for name, i in last.items():
        if name not in keep:
            done[i].append(name)
    return done


class TorchOnnxModel:
    """An ONNX graph evaluated with torch operators on ``device``.

    Parameters
    ----------
    path : the .onnx file (model contract: input ``image``, output ``prob``).
    device : ``"cuda"``, ``"cuda:1"``, ``"cpu"`` …
    half : compute in float16 (float32 in and out).
    channels_last : NHWC memory layout for activations and 4-D weights.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        half: bool = False,
        channels_last: bool = False,
        emulate_half: bool = False,
    ) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        graph = model.graph
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.channels_last = channels_last
        # float16 storage with float32 arithmetic: every weight, input and op output rounded to
        # float16, as tensor-core convolutions do (fp32 accumulation); fast on CPUs, whose float16
        # convolutions are ~30x slower than float32, so the fp16 score can be checked anywhere
        self.emulate_half = emulate_half and not half
        self.metadata = {p.key: p.value for p in model.metadata_props}
        missing = sorted(
            {n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")}
            | {n.op_type for n in graph.node if n.op_type not in OPS and n.op_type != "Constant"}
        )
        if missing:
            raise UnsupportedOperator(
                f"{path}: the torch runtime does not cover ONNX operator(s) {', '.join(missing)}; "
                "run this model with onnxruntime (runtime='onnxruntime')"
            )
        self.inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        self.outputs = [o.name for o in graph.output]
        # channels of the output `prob` as the graph declares them (None where it leaves them open)
        dims = next((list(o.type.tensor_type.shape.dim) for o in graph.output if o.name == "prob"), [])
        self.prob_channels = int(dims[1].dim_value) if len(dims) == 4 and dims[1].HasField("dim_value") else None
        self.values: dict[str, Any] = {t.name: self._place(numpy_helper.to_array(t)) for t in graph.initializer}
        self.nodes: list[tuple[OpFn, list[str], list[str], Attrs]] = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                self.values[node.output[0]] = self._place(self._constant(attrs))
                continue
            self.nodes.append((OPS[node.op_type], list(node.input), list(node.output), attrs))
        self.released = release_after_last_use(self.nodes, keep=set(self.values) | set(self.outputs))

    def _constant(self, attrs: Attrs) -> np.ndarray:
        from onnx import numpy_helper

        if "value" in attrs:
            return np.asarray(numpy_helper.to_array(attrs["value"]))
        for key, dtype in (
            ("value_float", np.float32),
            ("value_floats", np.float32),
            ("value_int", np.int64),
            ("value_ints", np.int64),
        ):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        raise UnsupportedOperator(f"Constant with attributes {sorted(attrs)}")

    def _place(self, array: np.ndarray) -> torch.Tensor:
        """Floating tensors go to the device in the compute dtype; integer ones (shapes) stay on the CPU."""
        t = torch.from_numpy(np.array(array))
        if not t.is_floating_point():
            return t
        # half: everything in float16; otherwise each tensor keeps its own precision (a model
        # converted by pipeline.training.fp16 carries float16 weights and its own Cast nodes)
        t = t.to(self.device, self.dtype if self.dtype == torch.float16 else t.dtype)
        if self.emulate_half:
            t = t.half().to(self.dtype)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    @torch.inference_mode()
    def run(self, image: torch.Tensor) -> torch.Tensor:
        """float32 N×3×H×W tensor on the model's device → float32 N×C×H×W probabilities (C = 2 or 4), same device."""
        x = image.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        env = dict(self.values)
        env[self.inputs[0]] = x
        if self.emulate_half:
            x = x.half().to(self.dtype)
            env[self.inputs[0]] = x
        for (fn, names_in, names_out, attrs), done in zip(self.nodes, self.released, strict=True):
            results = fn([env[n] if n else None for n in names_in], attrs)
            if self.emulate_half:
                results = [r.half().to(r.dtype) if r.is_floating_point() else r for r in results]
            env.update(zip(names_out, results, strict=False))
            for name in done:  # activations no later node reads: their memory goes back now
                del env[name]
        return env[self.outputs[0]].to(torch.float32).contiguous()

    def run_dlpack(self, image: Any) -> Any:
        """Any DLPack array (cupy, numpy, torch) → probabilities as the same library's array,
        shared with torch without copies (cupy stays on the GPU)."""
        if isinstance(image, torch.Tensor):
            return self.run(image)
        out = self.run(torch.from_dlpack(image))
        module = type(image).__module__.split(".")[0]
        if module == "cupy":
            import cupy

            return cupy.from_dlpack(out)
        if module == "numpy":
            return np.from_dlpack(out.cpu())
        raise TypeError(f"cannot return a {type(image)}; pass a torch tensor, cupy or numpy array")

    def run_numpy(self, images: np.ndarray) -> np.ndarray:
        """numpy → numpy (host copies at both ends; for the CPU path and tests)."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return self.run(x).cpu().numpy()
