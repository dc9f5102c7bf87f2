"""The real-time runtime: serve a trace on the wall clock with the simulator's own policy objects deciding live.

``python -m moesim.serve key=value ...`` (``moesim/serve/config.py``). The runtime (``runtime.ServeInstance``)
implements ``moesim.policies.view.InstanceView``: at each scheduling point it asks the policy
(``select``/``interrupts``) what to do and applies it through a *backend*:

* ``backend.TorchBackend`` (imports torch) executes every step on the calibrator's real-shape engine, copies
  non-expert sets from pinned host memory on their own CUDA stream (layer by layer under the prefill when the
  policy streams them) and fetches host-resident experts on a copy stream into staging buffers;
* ``runtime.CostBackend`` (torch-free) answers with a cost model's times instead: with the virtual clock
  (``clock=virtual``) the runtime advances time by those costs and reproduces the simulator's decisions and
  per-request table (tested).

This package's top level imports nothing heavy.
"""
