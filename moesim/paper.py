"""The paper's QoS setup and A100 measurements, and what follows from them in closed form.

Imani et al., "QoS-Efficient Serving of Multiple Mixture-of-Expert LLMs Using Partial Runtime
Reconfiguration" (ICML 2025); official code github.com/hamid-74/Multi-MoE (facts/paper.md). The numbers
here are the mechanism-level inputs of ``experiment=paper_a100``; tests/test_paper_reproduction.py checks the
simulator against the closed forms below, and reports/paper_a100/README.md explains each.

What the code does per request (its ``MultiMoE.generate`` as run by ``qos_evaluator*.py``):

* the prompt ``"Where is Yazd?"`` tokenizes to about 7 tokens (20 in the paper's text);
* ``output_token + 1 = 26`` forward passes: one prefill pass over the prompt, whose logits are not used
  (its "output" is the prompt itself), then 25 single-token decode passes (the first re-feeds the last prompt
  token) — so in moesim's accounting (the first output token comes out of the prefill) 26 output tokens;
  generation stops early only at an end-of-sequence token (not modelled: unknown without the weights);
* TTFT = the swap + the prefill pass; turnaround = finish − dequeue (queue wait excluded, logged apart);
  only requests dequeued within the 120 s window are served and counted;
* a host-resident expert is copied synchronously from pageable host memory into one GPU placeholder each
  time a layer's tokens route to it: once per (layer, expert) touched per forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# ---- the setup -------------------------------------------------------------------------------------
#: prompt tokens of the code's prompt (with BOS), and moesim output tokens for 1 prefill + 25 decode passes
PROMPT_TOKENS = 7
OUTPUT_TOKENS = 26
DECODE_PASSES = 25
#: weight budgets (bytes): reconfig on the whole A100, each of the two MIG instances
BUDGET_BYTES = 82.9e9
MIG_BUDGET_BYTES = 41.4e9

#: host-resident positions per layer of the paper's consolidation plan for Mixtral-8x7B base + instruct at
#: 82.9e9 bytes (the ``expert_map.json`` the official code wrote: 217 of 256 resident, 39 on the host, all in
#: layers 18–31; layer 21 keeps all 8 resident)
PLAN_HOST_PER_LAYER: tuple[int, ...] = (0,) * 18 + (3, 4, 4, 0, 2, 3, 1, 2, 3, 3, 2, 4, 4, 4)

# ---- the code's timings on the A100 (seconds; facts/paper.md) --------------------------------------
ATTENTION_S = (0.73e-3, 0.99e-3)  # per layer, batch 1
EXPERT_RESIDENT_S = (1.0e-3, 1.2e-3)  # expert part of a layer, both chosen experts resident
HOST_EXPERT_S = 27e-3  # added per host-resident expert used (29 ms with one, 56 ms with both)
SWAP_S = (1.05, 1.25)  # reconfiguration: the non-expert set replaced
TTFT_SWAP_S = (1.9, 2.1)
TTFT_NO_SWAP_S = 0.87


def host_experts_per_pass(host_per_layer: Sequence[int], n_tokens: int, n_experts: int = 8, top_k: int = 2,
                          weight: float = 1.0) -> float:
    """Expected host-resident experts one forward pass of ``n_tokens`` tokens copies (count).

    Per layer each token picks ``top_k`` distinct experts, a given expert with probability
    ``q = weight·k/E`` (``weight = 1``: uniform routing); the pass copies every host-resident expert at least
    one token picked: ``Σ_l h_l · (1 − (1 − q)^n)``. A decode pass (n = 1) copies ``q · Σ h_l``; for the paper's
    plan and uniform routing 39 · 2/8 = 9.75 experts.
    """
    q = min(1.0, weight * top_k / n_experts)
    return float(sum(h * (1.0 - (1.0 - q) ** n_tokens) for h in host_per_layer))


def host_experts_per_pass_exact(host_per_layer: Sequence[int], n_experts: int = 8, top_k: int = 2) -> float:
    """The same for one token under uniform top-k, counted over every equally likely set of k experts."""
    total = 0.0
    for h in host_per_layer:
        sets = math.comb(n_experts, top_k)
        # expected |chosen ∩ host| = Σ_j j · C(h, j) · C(E − h, k − j) / C(E, k)
        total += sum(j * math.comb(h, j) * math.comb(n_experts - h, top_k - j) for j in range(top_k + 1)) / sets
    return total


def host_routing_weight_from_ttft(ttft_s: float, prefill_compute_s: float, fetch_s: float,
                                  host_per_layer: Sequence[int] = PLAN_HOST_PER_LAYER,
                                  n_tokens: int = PROMPT_TOKENS, n_experts: int = 8, top_k: int = 2) -> float:
    """The relative routing probability of the host-resident positions that a measured prefill implies.

    Solves ``ttft = prefill_compute + fetch_s · host_experts_per_pass(host, n, weight)`` for ``weight``: the
    prefill of the no-swap TTFT copies ``(ttft − compute) / fetch_s`` host experts, against the uniform
    expectation. Closed form when every host layer has the same pick probability:
    ``(1 − q)^n = 1 − copies / Σ h``.
    """
    copies = (ttft_s - prefill_compute_s) / fetch_s
    H = sum(host_per_layer)
    if not 0 < copies < H:
        raise ValueError(f"TTFT {ttft_s} s implies {copies:.1f} host copies, outside (0, {H})")
    q = 1.0 - (1.0 - copies / H) ** (1.0 / n_tokens)
    return q * n_experts / top_k


def lone_service_s(swap_s: float, prefill_s: float, decode_step_s: float, swap_probability: float = 0.5,
                   decode_passes: int = DECODE_PASSES) -> float:
    """Mean service time (the code's turnaround) of a request that finds the GPU idle (seconds).

    Two equal streams: the previous request was of the other tenant with probability 1/2, so a swap is paid
    half the time.
    """
    return swap_probability * swap_s + prefill_s + decode_passes * decode_step_s


def reconfig_ttft_s(swap_probability: float = 0.5, ttft_swap_s: float = sum(TTFT_SWAP_S) / 2,
                    ttft_no_swap_s: float = TTFT_NO_SWAP_S) -> float:
    """Mean TTFT in the code's definition (swap + prefill; queue wait excluded) of the reconfig system (s).

    FIFO over two equal, independent Poisson streams: the request served before this one belongs to the
    other variant with probability 1/2 at any load (and across windows: the code keeps the last variant
    loaded), so the mean is the same at every rate: ``½ · 2.0 + ½ · 0.87 ≈ 1.44 s`` from the paper's timings.
    """
    return swap_probability * ttft_swap_s + (1.0 - swap_probability) * ttft_no_swap_s


def low_load_throughput_rpm(rate: float, tenants: int = 2) -> float:
    """The code's throughput (served per minute of the window) when every arrival is served (req/min).

    ``tenants`` Poisson streams at ``rate`` req/s each bring ``tenants · rate · 120`` requests in a 120 s
    window, served per 2 minutes: ``60 · tenants · rate`` (0.6 req/min at λ = 0.005; for MIG the code sums
    its two processes, the same). Holds while the GPU keeps up (λ ≲ 0.01 for MIG, ≲ 0.03 for reconfig).
    """
    return 60.0 * tenants * rate


def nonempty_window_throughput_rpm(rate: float, tenants: int = 2, window_s: float = 120.0) -> float:
    """The same averaged over windows that served at least one request (req/min).

    Per process ``E[n | n ≥ 1] = m / (1 − e^{−m})`` with ``m = rate · window_s``, so
    ``60 · tenants · rate / (1 − e^{−m})``: what the code's throughput plot (qos_plotter.py averages the
    files that exist) shows if windows that served nothing have no file.
    """
    m = rate * window_s
    return low_load_throughput_rpm(rate, tenants) / (1.0 - math.exp(-m))
