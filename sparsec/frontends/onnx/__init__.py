"""The ONNX front end: an ONNX file or ModelProto → the same Graph the torch front end makes."""

from sparsec.frontends.onnx.load import MIN_OPSET, is_onnx_source, load_model
from sparsec.frontends.onnx.module import OnnxModule
from sparsec.frontends.onnx.trace import OnnxProgram, import_onnx, trace_onnx

__all__ = ["MIN_OPSET", "OnnxModule", "OnnxProgram", "import_onnx", "is_onnx_source", "load_model", "trace_onnx"]
