"""moesim: simulate and calibrate serving many fine-tuned Mixture-of-Experts LLMs on few GPUs.

The simulator side (specs, workloads, cost models, engine, policies, metrics, report) never imports torch;
only the calibrator, the consolidation code and the executor do, lazily.
"""

__version__ = "0.1.0"
