"""Micro-benchmark: vLLM's CPU LoRA ops (`vllm/lora/ops/torch_ops`) against the grouped ones
(`adaptserve.engine_plugin.grouped_lora`), one thread, on SmolLM2-135M-sized projections.

A "call" is what `PunicaWrapperCPU.add_lora_linear` does for one LoRA-wrapped module: shrink into the fp32 buffer,
then expand into the bf16 output (adding). Shapes: `up` is 576 -> 16 -> 1536 (hidden -> rank -> intermediate);
`qkv` is the fused projection, three shrinks 576 -> 16 and three expand_slices into 576 + 192 + 192 columns.
4 adapter slots, a quarter of the tokens with no adapter (-1), bf16 weights and activations. Two call shapes:
`sgmv`, 8 sequences of equal length (vLLM 0.32's CPU runner sets is_prefill on every step, so every linear layer
takes this path), and `bgmv`, per-token slots in random order (the logits path, and the worst case for grouping).
The last rows put every token on one slot (the gateway's all-zero adapter for base requests does that to a batch
of base requests). The grouped ops' grouping is cached per step; the last line times computing it once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_ops_micro.py [--tokens 8 64 512] [--repeats 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import torch
from vllm.lora.ops.torch_ops import lora_ops as reference
from vllm.lora.punica_wrapper.utils import compute_meta

from adaptserve.engine_plugin import grouped_lora

HIDDEN, RANK, SLOTS, SEQUENCES = 576, 16, 4, 8
SHAPES = {"up": (1536,), "qkv": (576, 192, 192)}
# (shape, path, mixed): mixed is 4 slots and a quarter at -1, otherwise every token on slot 0
CONFIGS = [
    ("up", "sgmv", True),
    ("up", "bgmv", True),
    ("qkv", "sgmv", True),
    ("qkv", "bgmv", True),
    ("up", "sgmv", False),
]


def token_slots(tokens: int, path: str, mixed: bool, generator: torch.Generator) -> torch.Tensor:
    """Mixed: a quarter of the tokens (bgmv) or of the sequences (sgmv) at -1, the rest spread over the slots."""
    units = tokens if path == "bgmv" else SEQUENCES
    slots = torch.arange(units) % SLOTS if mixed else torch.zeros(units, dtype=torch.long)
    slots[: units // 4 if mixed else 0] = -1
    slots = slots[torch.randperm(units, generator=generator)]
    return slots if path == "bgmv" else torch.repeat_interleave(slots, tokens // SEQUENCES)


def lora_call(ops: ModuleType, path: str, slots: torch.Tensor, outputs: tuple[int, ...]) -> Callable[[], None]:
    """One module's shrink + expand with `ops`, on fresh random tensors."""
    n = slots.numel()
    x = torch.randn(n, HIDDEN).to(torch.bfloat16)
    y = torch.randn(n, sum(outputs)).to(torch.bfloat16)
    lora_a = [(torch.randn(SLOTS, 1, RANK, HIDDEN) / HIDDEN**0.5).to(torch.bfloat16) for _ in outputs]
    lora_b = [(torch.randn(SLOTS, 1, size, RANK) / RANK**0.5).to(torch.bfloat16) for size in outputs]
    buffers = [torch.zeros(n, RANK) for _ in outputs]
    meta = compute_meta(slots)[:6]  # start locations, lengths, slots, batches, max length, token count

    def call() -> None:
        offset = 0
        for a, b, buffer, size in zip(lora_a, lora_b, buffers, outputs, strict=True):
            if path == "bgmv":
                ops.bgmv_shrink(x, a, buffer, slots, 1.0)
                ops.bgmv_expand_slice(buffer, b, y, slots, offset, size, True)
            else:
                ops.sgmv_shrink(x, a, buffer, *meta, 1.0)
                ops.sgmv_expand_slice(buffer, b, y, *meta, offset, size, True)
            offset += size

    return call


def median_ms(calls: tuple[Callable[[], None], ...], repeats: int) -> list[float]:
    """Median ms per call of each, timed in alternation so that load from elsewhere hits them alike."""
    times: list[list[float]] = [[] for _ in calls]
    for repeat in range(repeats + 10):
        for call, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            if repeat >= 10:  # warm-up
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1e3 for spent in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print("| shape | path | slots | tokens | vLLM ms | grouped ms | speed-up |")
    print("|---|---|---|---:|---:|---:|---:|")
    for shape, path, mixed in CONFIGS:
        for tokens in args.tokens:
            slots = token_slots(tokens, path, mixed, generator)
            outputs = SHAPES[shape]
            calls = (lora_call(reference, path, slots, outputs), lora_call(grouped_lora, path, slots, outputs))
            old, new = median_ms(calls, args.repeats)
            mix = "4 + base" if mixed else "1"
            print(f"| {shape} | {path} | {mix} | {tokens} | {old:.3f} | {new:.3f} | {old / new:.1f}x |")
    slots = token_slots(max(args.tokens), "bgmv", True, generator)
    (grouping,) = median_ms((lambda: grouped_lora.group_slots(slots),), args.repeats)
    print(f"\nGrouping {max(args.tokens)} tokens in random slot order (once per step): {grouping * 1e3:.0f} us")


if __name__ == "__main__":
    main()
