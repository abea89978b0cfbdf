"""Micro-benchmark: vLLM's CPU LoRA ops (`vllm/lora/ops/torch_ops`) against the grouped ones
(`adaptserve.engine_plugin.grouped_lora`), one thread, on SmolLM2-135M-sized projections.

A "call" is what `PunicaWrapperCPU.add_lora_linear` does for one LoRA-wrapped module: shrink into the fp32 buffer,
then expand into the bf16 output (adding). Shapes: `up` is 576 -> 16 -> 1536 (hidden -> rank -> intermediate);
`qkv` is the fused projection, three shrinks 576 -> 16 and three expand_slices into 576 + 192 + 192 columns.
4 adapter slots, a quarter of the tokens with no adapter (-1), bf16 weights and activations. Two call shapes:
`sgmv`, 8 sequences of equal length (vLLM 0.32's CPU runner sets is_prefill on every step, so every linear layer
takes this path), and `bgmv`, per-token slots in random order (the logits path, and the worst case for grouping).
The last rows put every token on one slot (the gateway's all-zero adapter for base requests does that to a batch
of base requests). The grouped ops' grouping is cached per step; the line after the first table times computing it
once. The second table is one LoRA-wrapped module's whole `PunicaWrapperCPU.add_lora_linear` on a prefill step's
metadata: vLLM's method over the grouped ops against the fused method (`engine_plugin/fused_linear.py`), for each
kind of SmolLM2 module (`down` is 1536 -> 576).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_ops_micro.py [--tokens 8 64 512] [--repeats 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import torch
from vllm.lora.layers import LoRAMapping
from vllm.lora.ops.torch_ops import lora_ops as reference
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
from vllm.lora.punica_wrapper.utils import compute_meta

from adaptserve.engine_plugin import fused_linear, grouped_lora

HIDDEN, RANK, SLOTS, SEQUENCES = 576, 16, 4, 8
SHAPES = {"up": (1536,), "qkv": (576, 192, 192)}
MODULES = {  # in features, output slices
    "qkv": (HIDDEN, (576, 192, 192)),
    "o": (HIDDEN, (576,)),
    "gate_up": (HIDDEN, (1536, 1536)),
    "down": (1536, (576,)),
}
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


def linear_calls(tokens: int, mixed: bool, module: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """One module's add_lora_linear on a prefill step of SEQUENCES sequences: vLLM's method (over the grouped ops,
    installed by the caller) and the fused one, on the same tensors."""
    in_features, outputs = MODULES[module]
    per = tokens // SEQUENCES
    seq_slots = [(i % SLOTS) if mixed and i % 4 else (0 if not mixed else -1) for i in range(SEQUENCES)]
    ids = tuple(slot + 1 for slot in seq_slots for _ in range(per))
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=max(tokens, 8), max_batches=SEQUENCES, device="cpu")
    mapping = LoRAMapping(ids, tuple(slot + 1 for slot in seq_slots), is_prefill=True)
    wrapper.update_metadata(mapping, [1, 2, 3, 4], SLOTS, 1000)
    x = torch.randn(len(ids), in_features).to(torch.bfloat16)
    y = torch.randn(len(ids), sum(outputs)).to(torch.bfloat16)
    lora_a = tuple((torch.randn(SLOTS, 1, RANK, in_features) / in_features**0.5).to(torch.bfloat16) for _ in outputs)
    lora_b = tuple((torch.randn(SLOTS, 1, size, RANK) / RANK**0.5).to(torch.bfloat16) for size in outputs)
    vllm_method = fused_linear.vllm_add_lora_linear()
    return (
        lambda: vllm_method(wrapper, y, x, lora_a, lora_b, 1.0, outputs),
        lambda: fused_linear.add_lora_linear(wrapper, y, x, lora_a, lora_b, 1.0, outputs),
    )


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
    grouped_lora.install()  # vLLM's add_lora_linear then calls the grouped ops, as in the engine before the fused one
    print("\n| module | slots | tokens | vLLM's add_lora_linear ms | fused ms | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for module in MODULES:
        for mixed in (False, True):
            for tokens in args.tokens:
                old, new = median_ms(linear_calls(tokens, mixed, module), args.repeats)
                mix = "4 + base" if mixed else "1"
                print(f"| {module} | {mix} | {tokens} | {old:.3f} | {new:.3f} | {old / new:.1f}x |")
    grouped_lora.uninstall()


if __name__ == "__main__":
    main()
