"""Grouped CPU LoRA ops: a drop-in for vLLM's `lora/ops/torch_ops/lora_ops.py` as `PunicaWrapperCPU` uses them.

What it changes, and why (vLLM 0.32, CPU platform):

- Speed. vLLM's torch ops gather `lora_weights[token_indices]`, a copy of every token's [out x in] matrix, for
  every LoRA-wrapped module of every layer of every step, then run a batched einsum; the `sgmv_*` (prefill) ops
  first explode the per-sequence indices with `repeat_interleave` and do the same. Here a batch's tokens are
  grouped by adapter slot once, and each slot present costs one matmul over its own tokens. A batch with one slot
  is one matmul on the whole batch, with no gather or scatter; a slot whose tokens are contiguous (one prefill
  sequence) is a slice, not a gather.
- Correctness. vLLM writes -1 for "no adapter", and Python indexing reads `lora_weights[-1]` as the last slot, so in
  a batch mixing base-model and adapter requests the base tokens received the last slot's adapter. Here a negative
  slot contributes nothing: with `add_inputs` its output rows stay bit for bit as they were; where an op assigns
  (shrink, or expand with `add_inputs=False`) its rows get zeros, the result of an all-zero adapter. This is what
  the CUDA (Triton) kernels do: they skip lora id -1, and their shrink zeroes its output first.

Everything else matches the reference ops: the same signatures, dtypes (inputs and weights are cast to the output's
dtype, as there), `scaling` applied to the shrink product, expand writing only the columns the weight and the
output have in common, expand_slice writing `[slice_offset, slice_offset + slice_size)`, and a single-row result
broadcast over every output row.

The grouping is computed once per step, not once per call: it is cached under the exact bytes of the index tensors
(`token_groups`, `sequence_groups`). Every layer of a step passes the same indices and hits the cache; when a step
changes them, the key changes with them. The content is the key because vLLM rewrites its index buffers in place
(same address) and, under `torch.inference_mode`, those buffers carry no version counter; hashing the bytes of a
few hundred int64 costs about 2 us per call.

Micro-benchmark (`benchmarks/lora_ops_micro.py`, one thread of a shared 2-core AMD EPYC, 2026-12-01): one module's
shrink + expand, ms per call. `up` is 576 -> 16 -> 1536, `qkv` three slices into 576 + 192 + 192; 4 slots and a
quarter of the tokens with no adapter ("4 + base") or every token on one slot ("1"); bf16 weights, fp32 buffer:

    | shape | path | slots | tokens | vLLM ms | grouped ms | speed-up |
    |---|---|---|---:|---:|---:|---:|
    | up | sgmv | 4 + base | 8 | 0.337 | 0.294 | 1.1x |
    | up | sgmv | 4 + base | 64 | 1.486 | 0.455 | 3.3x |
    | up | sgmv | 4 + base | 512 | 13.541 | 1.622 | 8.4x |
    | up | bgmv | 4 + base | 8 | 0.292 | 0.293 | 1.0x |
    | up | bgmv | 4 + base | 64 | 2.257 | 0.741 | 3.0x |
    | up | bgmv | 4 + base | 512 | 12.972 | 1.797 | 7.2x |
    | qkv | sgmv | 4 + base | 8 | 0.772 | 0.800 | 1.0x |
    | qkv | sgmv | 4 + base | 64 | 2.651 | 0.978 | 2.7x |
    | qkv | sgmv | 4 + base | 512 | 20.559 | 2.390 | 8.6x |
    | qkv | bgmv | 4 + base | 8 | 0.633 | 0.756 | 0.8x |
    | qkv | bgmv | 4 + base | 64 | 2.197 | 1.115 | 2.0x |
    | qkv | bgmv | 4 + base | 512 | 20.564 | 3.131 | 6.6x |
    | up | sgmv | 1 | 8 | 0.318 | 0.109 | 2.9x |
    | up | sgmv | 1 | 64 | 1.574 | 0.253 | 6.2x |
    | up | sgmv | 1 | 512 | 12.214 | 1.020 | 12.0x |

Grouping 512 tokens in random slot order, once per step, takes 43 us. A mixed decode batch is at parity: 8 tokens
over 4 slots give matmuls of one or two rows, each costing about what gathering a token's weights costs. From 64
tokens on, and for a batch on one slot at any size, the grouped ops are several times faster.

`install()` points the six op names that `vllm.lora.punica_wrapper.punica_cpu` imported at the grouped ops here, and
`PunicaWrapperCPU.add_lora_linear` at `fused_linear.py`'s (every slice of a fused projection in one shrink);
`vllm.lora.ops.torch_ops` itself keeps the reference ops.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import torch

Rows: TypeAlias = slice | torch.Tensor  # a slice (contiguous rows, no copy) or int64 row positions
ALL_ROWS = slice(None)

OP_NAMES = ("bgmv_expand", "bgmv_expand_slice", "bgmv_shrink", "sgmv_expand", "sgmv_expand_slice", "sgmv_shrink")


@dataclass(frozen=True)
class SlotGroups:
    """A batch's rows grouped by adapter slot: what every LoRA op of one step shares.

    `slots` holds (slot, rows) for each slot >= 0 that has tokens, in slot order; `base_rows` the rows with no
    adapter (a negative slot), or None. `ALL_ROWS` means every row of the batch.
    """

    slots: tuple[tuple[int, Rows], ...]
    base_rows: Rows | None


def group_slots(token_slots: torch.Tensor) -> SlotGroups:
    """Group token positions by slot; every negative slot means "no adapter"."""
    token_slots = token_slots.reshape(-1).clamp(min=-1)
    slots, counts = torch.unique(token_slots, sorted=True, return_counts=True)
    slot_list, count_list = slots.tolist(), counts.tolist()
    if len(slot_list) <= 1:
        if not slot_list:
            return SlotGroups((), None)
        if slot_list[0] < 0:
            return SlotGroups((), ALL_ROWS)
        return SlotGroups(((slot_list[0], ALL_ROWS),), None)
    order = torch.argsort(token_slots, stable=True)  # positions, slot by slot, ascending within a slot
    ends = counts.cumsum(0)
    firsts, lasts = order[ends - counts].tolist(), order[ends - 1].tolist()
    groups: list[tuple[int, Rows]] = []
    base_rows: Rows | None = None
    for slot, count, first, last, positions in zip(
        slot_list, count_list, firsts, lasts, order.split(count_list), strict=True
    ):
        rows: Rows = slice(first, last + 1) if last - first + 1 == count else positions
        if slot < 0:
            base_rows = rows
        else:
            groups.append((slot, rows))
    return SlotGroups(tuple(groups), base_rows)


_CACHE_SIZE = 8
_cache: OrderedDict[tuple[object, ...], SlotGroups] = OrderedDict()
_cache_lock = threading.Lock()  # vLLM calls from one thread; the lock keeps the LRU sound if anyone does not


def _content_key(*tensors: torch.Tensor) -> tuple[object, ...]:
    return tuple(part for t in tensors for part in (t.dtype, t.shape, t.detach().cpu().numpy().tobytes()))


def _cached(key: tuple[object, ...], build: Callable[[], SlotGroups]) -> SlotGroups:
    with _cache_lock:
        groups = _cache.get(key)
        if groups is not None:
            _cache.move_to_end(key)
            return groups
    groups = build()
    with _cache_lock:
        _cache[key] = groups
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return groups


def clear_group_cache() -> None:
    """Forget every cached grouping (they are only ever recomputed, never wrong: the key is the content)."""
    with _cache_lock:
        _cache.clear()


def token_groups(lora_indices_tensor: torch.Tensor) -> SlotGroups:
    """The grouping of a per-token slot tensor (the bgmv ops' indices), cached by content."""
    return _cached(_content_key(lora_indices_tensor), lambda: group_slots(lora_indices_tensor))


def sequence_groups(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> SlotGroups:
    """The grouping of per-sequence slots and lengths (the sgmv ops' metadata), cached by content.

    Tokens are laid out sequence after sequence from row 0, as the reference's `repeat_interleave` lays them out.
    """
    return _cached(
        _content_key(lora_indices_tensor, seq_len_tensor),
        lambda: group_slots(torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)),
    )


_SMALL_GROUP = 32  # rows up to which a bf16/fp16 product is cheaper in fp32 (oneDNN's fixed cost is ~20 us)


def slot_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A slot's [out, in] matrix from its [out, in] or [1, out, in] entry of the weight stack."""
    return weight.squeeze(0) if weight.dim() == 3 else weight


def product(inputs: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """inputs @ weight.T in `dtype`, both cast to `dtype` first as the reference casts them.

    A few rows in bf16/fp16 are multiplied in fp32 and rounded back: the same products (bf16 x bf16 is exact in
    fp32) summed in fp32, as the reduced-precision kernels sum them, without their per-call cost.
    """
    inputs, weight = inputs.to(dtype), weight.to(dtype)
    if dtype in (torch.bfloat16, torch.float16) and inputs.shape[0] <= _SMALL_GROUP:
        return torch.mm(inputs.float(), weight.float().t()).to(dtype)
    return torch.mm(inputs, weight.t())


def write_rows(target: torch.Tensor, rows: Rows, values: torch.Tensor, add_inputs: bool) -> None:
    """target[rows] = values, or += values; no other row of target is read or written."""
    if isinstance(rows, slice):
        destination = target[rows]
        if add_inputs:
            destination.add_(values)
        else:
            destination.copy_(values)
    elif not add_inputs:
        target.index_copy_(0, rows, values)
    elif target.is_contiguous():
        target.index_add_(0, rows, values)
    else:  # a column slice (fused q/k/v, gate/up): index_add_ on a strided view is several times slower
        target.index_copy_(0, rows, target.index_select(0, rows).add_(values))


def _zero(target: torch.Tensor, rows: Rows) -> None:
    if isinstance(rows, slice):
        target[rows].zero_()
    else:
        target.index_fill_(0, rows, 0)


def _grouped_matmul(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    target: torch.Tensor,
    groups: SlotGroups,
    *,
    add_inputs: bool,
    scale: float = 1.0,
    out_features: int | None = None,
) -> None:
    """target[rows] (+)= scale * inputs[rows] @ weights[slot][:out_features].T for each slot, in target's dtype.

    Rows with no adapter are left alone when adding and zeroed when assigning.
    """
    for slot, rows in groups.slots:
        values = product(inputs[rows], slot_matrix(weights[slot])[:out_features], target.dtype)
        if scale != 1.0:
            values = scale * values
        write_rows(target, rows, values, add_inputs)
    if groups.base_rows is not None and not add_inputs:
        _zero(target, groups.base_rows)


def _shrink(
    inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor, groups: SlotGroups, scaling: float
) -> None:
    target = output[:, : weights.shape[-2]]
    _grouped_matmul(inputs, weights, target, groups, add_inputs=False, scale=scaling)


def _expand(
    inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor, groups: SlotGroups, add_inputs: bool
) -> None:
    # The adapter and the model may pad the output dimension differently: write the columns both have.
    common = min(weights.shape[-2], output.shape[1])
    _grouped_matmul(inputs, weights, output[:, :common], groups, add_inputs=add_inputs, out_features=common)


def _expand_slice(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    output: torch.Tensor,
    groups: SlotGroups,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool,
) -> None:
    target = output[:, slice_offset : slice_offset + slice_size]
    _grouped_matmul(inputs, weights, target, groups, add_inputs=add_inputs)


# The six ops, with the reference's signatures (punica_cpu passes some arguments by keyword).


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    _shrink(inputs, lora_b_weights, output_tensor, token_groups(lora_indices_tensor), scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    _expand(inputs, lora_b_weights, output_tensor, token_groups(lora_indices_tensor), add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    groups = token_groups(lora_indices_tensor)
    _expand_slice(inputs, lora_b_weights, output_tensor, groups, slice_offset, slice_size, add_inputs)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    groups = sequence_groups(lora_indices_tensor, seq_len_tensor)
    _shrink(inputs, lora_a_weights, output_tensor, groups, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    groups = sequence_groups(lora_indices_tensor, seq_len_tensor)
    _expand(inputs, lora_b_weights, output_tensor, groups, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    groups = sequence_groups(lora_indices_tensor, seq_len_tensor)
    _expand_slice(inputs, lora_b_weights, output_tensor, groups, slice_offset, slice_size, add_inputs)


class PatchError(RuntimeError):
    """vLLM's CPU LoRA path is not the one this patch was written for; nothing was changed."""


def grouped_ops() -> dict[str, Callable[..., None]]:
    """The six grouped ops by name."""
    return {name: globals()[name] for name in OP_NAMES}


def install() -> None:
    """Point the op names `vllm.lora.punica_wrapper.punica_cpu` holds at the grouped ops. Idempotent.

    `punica_cpu` imports the ops by name, and `PunicaWrapperCPU`'s methods look those names up in the module's
    globals at call time; so replacing them there changes every wrapper, made before or after, and importing the
    module here makes the order of imports irrelevant (a later import finds this same, patched module). Refuses,
    changing nothing, if any name holds something other than vLLM's reference op or ours.
    """
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    ours = grouped_ops()
    for name in OP_NAMES:
        held = getattr(punica_cpu, name, None)
        if held is not ours[name] and held is not getattr(lora_ops, name, None):
            raise PatchError(f"punica_cpu.{name} is {held!r}, neither vLLM's reference op nor the grouped one")
    from . import fused_linear  # it builds on the ops here

    fused_linear.install()  # refuses, changing nothing, before any op is replaced
    for name in OP_NAMES:
        setattr(punica_cpu, name, ours[name])


def uninstall() -> None:
    """Give `punica_cpu` vLLM's reference ops back."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name in OP_NAMES:
        setattr(punica_cpu, name, getattr(lora_ops, name))
    from . import fused_linear

    fused_linear.uninstall()


def installed() -> bool:
    """Whether `punica_cpu` calls the grouped ops."""
    from vllm.lora.punica_wrapper import punica_cpu

    from . import fused_linear

    return fused_linear.installed() and all(getattr(punica_cpu, name, None) is op for name, op in grouped_ops().items())
