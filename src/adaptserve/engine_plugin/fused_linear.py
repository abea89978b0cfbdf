"""`PunicaWrapperCPU.add_lora_linear` over the grouped ops: every slice of a fused projection in one shrink.

vLLM's `add_lora_linear` (vLLM 0.32, `punica_cpu.py`) handles a LoRA-wrapped layer whose output is several slices
side by side (q/k/v, gate/up) one slice at a time: it allocates a zeroed fp32 buffer per slice, shrinks into each
(one op call, so one cast of the inputs and one matmul per slice and adapter slot), then expands each into its
columns of the output (another op call per slice). On this CPU each of those calls costs tens of microseconds
whatever its size, so for SmolLM2's q/k/v (576 -> 576 + 192 + 192) the LoRA path cost about as much as the layer's
own matmul.

Here, per adapter slot present in the batch: the slices' A matrices are stacked and the inputs are cast and
multiplied once (`[rows, slices x rank]`, fp32 as vLLM's buffer); the expand is one matmul against the
block-diagonal of the B matrices where the output is small (the zero blocks cost less than the calls they save:
`BLOCK_DIAGONAL_MACS`), else one per slice (and always in fp16, where a value past its range would become inf, and
inf times a zero block NaN in the other slices' columns); no buffer is allocated. The products are those vLLM's path
computes (fp32 shrink, then the output's dtype), so the result agrees with it to rounding; on the shapes the tests
and the benchmark use it is bit for bit the same. Rows with no adapter (slot -1) are left alone, as the grouped ops
leave them.

`install()` sets the method on `PunicaWrapperCPU` (every wrapper, made before or after, looks it up on the class);
`uninstall()` gives vLLM's back. Installed together with the grouped ops (`grouped_lora.install`).
"""

from __future__ import annotations

from typing import Any

import torch

from .grouped_lora import (
    PatchError,
    SlotGroups,
    product,
    sequence_groups,
    slot_matrix,
    token_groups,
    write_rows,
)

# Up to this many multiply-adds (rows x rank x output columns) one block-diagonal expand beats one matmul per slice:
# its zero blocks cost (slices - 1) times the useful work, each saved call ~20 us (2-core AMD EPYC, bf16).
BLOCK_DIAGONAL_MACS = 1 << 20
_VLLM_METHOD = "_adaptserve_vllm_add_lora_linear"  # where install() keeps vLLM's method for uninstall()


def add_lora_linear(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: tuple[torch.Tensor, ...] | None = None,
    **kwargs: Any,
) -> None:
    """y[:, slice i] += scale * x @ A_i[slot].T @ B_i[slot].T for each token's slot, as vLLM's method does
    (`kwargs` are unused there too). A caller's own `buffer` (none on the CPU in vLLM 0.32) goes to vLLM's method,
    which shrinks into it."""
    assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
    if buffer is not None:
        vllm = vllm_add_lora_linear()
        vllm(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs)
        return
    groups = _groups(self)
    if not groups.slots:
        return
    x = x.view(-1, x.shape[-1])
    y = y.view(-1, y.shape[-1])
    rank, total = lora_a_stacked[0].shape[-2], sum(output_slices)
    for slot, rows in groups.slots:
        a = [slot_matrix(w[slot]) for w in lora_a_stacked]
        inputs = x[rows]
        shrunk = product(inputs, torch.cat(a) if len(a) > 1 else a[0], torch.float32)
        if scale != 1.0:
            shrunk = scale * shrunk
        b = [slot_matrix(w[slot])[:size] for w, size in zip(lora_b_stacked, output_slices, strict=True)]
        if len(b) == 1 or (y.dtype != torch.float16 and inputs.shape[0] * rank * total <= BLOCK_DIAGONAL_MACS):
            write_rows(y[:, :total], rows, product(shrunk, torch.block_diag(*b) if len(b) > 1 else b[0], y.dtype), True)
            continue
        offset = 0
        for i, (weight, size) in enumerate(zip(b, output_slices, strict=True)):
            values = product(shrunk[:, i * rank : (i + 1) * rank], weight, y.dtype)
            write_rows(y[:, offset : offset + size], rows, values, True)
            offset += size


def _groups(wrapper: Any) -> SlotGroups:
    """The step's rows by slot, as the op the wrapper would call reads its metadata (prefill: per sequence)."""
    if wrapper.is_prefill:
        if wrapper.no_lora:  # vLLM's prefill ops return at once: no token has an adapter
            return SlotGroups((), None)
        _, seq_lens, seq_slots, *_ = wrapper.prefill_metadata
        return sequence_groups(seq_slots, seq_lens)
    return token_groups(wrapper.token_lora_indices)


def install() -> None:
    """Set the fused method on `PunicaWrapperCPU`, keeping vLLM's. Idempotent; refuses (changing nothing) if the
    class holds a method that is neither vLLM's nor this one."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    if PunicaWrapperCPU.__dict__.get("add_lora_linear") is add_lora_linear:
        return
    setattr(PunicaWrapperCPU, _VLLM_METHOD, vllm_add_lora_linear())
    PunicaWrapperCPU.add_lora_linear = add_lora_linear  # type: ignore[method-assign]


def uninstall() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    original = PunicaWrapperCPU.__dict__.get(_VLLM_METHOD)
    if original is not None:
        PunicaWrapperCPU.add_lora_linear = original  # type: ignore[method-assign]
        delattr(PunicaWrapperCPU, _VLLM_METHOD)


def installed() -> bool:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    return PunicaWrapperCPU.__dict__.get("add_lora_linear") is add_lora_linear


def vllm_add_lora_linear() -> Any:
    """vLLM's own method, installed or not (the self-check and the tests compare against it); PatchError when the
    class holds a method that is neither vLLM's nor this one."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    held = PunicaWrapperCPU.__dict__.get(_VLLM_METHOD, PunicaWrapperCPU.__dict__.get("add_lora_linear"))
    if getattr(held, "__module__", None) != PunicaWrapperCPU.__module__:
        raise PatchError(f"PunicaWrapperCPU.add_lora_linear is {held!r}, neither vLLM's nor the fused one")
    return held
