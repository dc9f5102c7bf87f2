"""The real multi-tenant executor and the validation of the simulator against it.

``moesim.executor.gpu_cost.GPUExecutedCost`` (cost model ``executed``; imports torch, registered when that
module is imported) executes every step the engine schedules on a real-shape ``MoEEngine`` and returns the
measured time; ``moesim.executor.drive.drive`` runs ``moesim.engine.simulate`` with it, giving the measured
per-request table; ``moesim.executor.compare`` scores a simulated table against it;
``python -m moesim.executor`` does all of it for a trace and several policies (see docs/validation.md).
This package's top level imports nothing heavy.
"""
