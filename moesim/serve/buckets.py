"""Shape buckets of the runtime's CUDA graphs (torch-free: the simulator's cost models read them too).

* **Decode**: a batch of ``B`` sequences runs in the graph of the smallest batch bucket ``≥ B``
  (``bucket_sizes``: 1, 2, 4, … below ``max_batch``, then ``max_batch``) and of its longest key length rounded
  up to ``kv_bucket`` (``kv_round``).
* **Prefill**: a prefill of ``T`` prompt tokens in total (any number of sequences up to the policy's
  ``max_batch``, every one from context 0) runs in the graph of the smallest token bucket ``≥ T``
  (``prefill_bucket_for``; buckets ``prefill_bucket_sizes``: ``smallest`` × 1, 1.5, 2, 3, 4, 6, 8, …: pads cost
  at most half the tokens, and below ≈ 256 tokens a Mixtral prefill costs the same at any length on the H200,
  so 256 is the smallest bucket there). A prefill with more tokens than the largest captured bucket, more
  sequences than ``max_batch``, or a context runs as before (its exact-shape graph if one was captured, else
  eagerly).
"""

from __future__ import annotations

#: The smallest prefill token bucket on CUDA (tokens): a Mixtral-8x7B prefill of 26 and of 256 tokens took
#: 39 and 40 ms on the H200 (``reports/validation/realtime/h200x2/tables/prefill_table.csv``).
PREFILL_MIN_BUCKET_CUDA = 256
#: ... and on the CPU (the tiny model's short prompts).
PREFILL_MIN_BUCKET_CPU = 16


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch-size buckets: 1, 2, 4, … below ``max_batch``, then ``max_batch`` (sequences)."""
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch}: must be ≥ 1")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return tuple(out)


def bucket_for(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket holding ``n`` (ValueError past the largest)."""
    for b in sizes:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} sequences exceeds the largest bucket {sizes[-1]}")


def kv_round(max_k: int, kv_bucket: int) -> int:
    """The longest key length rounded up to a multiple of ``kv_bucket`` (tokens)."""
    return -(-max_k // kv_bucket) * kv_bucket


def prefill_bucket_sizes(max_tokens: int, smallest: int = PREFILL_MIN_BUCKET_CUDA) -> tuple[int, ...]:
    """Prefill token buckets ``smallest`` × 1, 1.5, 2, 3, 4, 6, … up to the first ``≥ max_tokens`` (tokens)."""
    if smallest < 2 or smallest % 2:
        raise ValueError(f"smallest={smallest}: must be an even number ≥ 2")
    out = [smallest]
    while out[-1] < max_tokens:
        b = out[-1]
        p = 1 << (b.bit_length() - 1)  # b is p or 1.5 p
        out.append(p * 3 // 2 if b == p else 2 * p)
    return tuple(out)


def prefill_bucket_for(tokens: int, smallest: int = PREFILL_MIN_BUCKET_CUDA) -> int:
    """The token bucket a prefill of ``tokens`` tokens runs in."""
    if tokens < 1:
        raise ValueError(f"tokens={tokens}: a prefill has ≥ 1 token")
    return prefill_bucket_sizes(tokens, smallest)[-1]


def prefill_bound(prompts: list[int], max_batch: int) -> int:
    """The most tokens one prefill of these prompts can hold: the ``max_batch`` longest together (tokens)."""
    top = sorted(prompts, reverse=True)[:max(1, max_batch)]
    return int(sum(top))
