"""GPU calibrator: measure what the simulator's ``profile`` cost model needs, on the real model shapes.

``python -m moesim.calibrate device=cuda model=mixtral-8x7b`` builds the model at real shapes in bf16 with
random weights on the GPU, times every operation a serving step is made of (CUDA events, median of repeats
after warm-up), the host link, MIG-sized compute slices (CUDA green contexts), and held-out full-model steps;
it writes a tidy long-format profile (parquet) and a metadata JSON under ``calibration/profiles/``.

Torch-free at import: ``schema``, ``work`` and ``config`` are read by the simulator side; ``engine``,
``suite``, ``hostlink``, ``slices`` and ``validate`` import torch when used.
"""
