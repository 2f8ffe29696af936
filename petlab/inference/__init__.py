"""What serves a registered model: numpy, Pillow and ONNX Runtime only, never torch.

The demo server and the Hugging Face Space predict through this package, so the Space installs ONNX
Runtime (tens of MB) instead of CUDA torch (5.9 GB). Where a version has no loadable ONNX file, or
PETLAB_RUNTIME=torch says so, `model.load_version` calls the fallback its caller passes
(petlab/registry/torch_fallback.py: the PyTorch exports). tests/test_layering.py checks that nothing
here imports torch or petlab's training code.
"""
