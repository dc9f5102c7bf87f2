"""Fused GPU kernels for the calibrator's engine and the real-time runtime (Triton; imported lazily).

Nothing here is imported by the simulator: ``moesim.kernels.fused_moe`` and ``moesim.kernels.fused_ops`` import
torch (and Triton when it is installed) at their own import. See docs/kernels.md.
"""
