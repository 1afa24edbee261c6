"""Export: checkpoint → ONNX (parity-gated), ONNX → TensorRT plan (GPU), Triton repository.

Submodules import their heavy dependencies (torch, onnx, tensorrt) themselves; importing this
package costs nothing.
"""
