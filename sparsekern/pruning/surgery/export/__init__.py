"""Exported model files: ``safetensors`` (weights + architecture metadata), ``sparse`` (CSR weights
where timing says they are faster), ``onnx`` (checked against PyTorch with onnxruntime), and
``load_exported`` to read any of them back. The optional packages (safetensors, onnx, onnxruntime)
are imported only by the format that needs them."""
