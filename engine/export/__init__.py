"""Turning a package into deployable artifacts: ONNX export, the TensorRT op check and builder, AOTInductor
packages, Triton model repositories. Torch is imported only by the modules that export from the model."""
