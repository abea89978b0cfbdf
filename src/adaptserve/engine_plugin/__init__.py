"""adaptserve's vLLM plugin (entry point group `vllm.general_plugins`): grouped CPU LoRA ops inside vLLM.

vLLM calls `register()` in each of its processes (API server, engine core, workers). It does nothing unless
`ADAPTSERVE_ENGINE_PLUGIN=grouped_lora`; then, on the CPU platform with a vLLM it knows (0.32.x), it checks the
grouped ops (`grouped_lora.py`) against vLLM's own on small random batches and, only if they agree, installs them.
Whatever it decides is logged (logger `adaptserve.engine_plugin`, printed by vLLM's handler when nothing else would
print it) and, if `ADAPTSERVE_ENGINE_PLUGIN_STATUS` names a path, written as JSON to `<path>.<pid>.json`, one file
per process so that no process overwrites another's verdict:

    {"plugin": "grouped_lora", "active": true, "vllm": "0.32.0", "reason": "...", "pid": 1234, "process": "..."}

Active means this process treats LoRA slot -1 as "no adapter". This package runs inside vLLM's processes and imports
nothing else from adaptserve.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PLUGIN = "grouped_lora"
ENABLE_ENV = "ADAPTSERVE_ENGINE_PLUGIN"
STATUS_ENV = "ADAPTSERVE_ENGINE_PLUGIN_STATUS"
KNOWN_VLLM = ((0, 32),)  # (major, minor) whose punica_cpu and torch ops this patch was written against

logger = logging.getLogger("adaptserve.engine_plugin")


def register() -> None:
    """vLLM's entry point: install the grouped CPU LoRA ops if ADAPTSERVE_ENGINE_PLUGIN=grouped_lora.

    Never raises: whatever goes wrong leaves vLLM's own ops in place and says why.
    """
    if os.environ.get(ENABLE_ENV) != PLUGIN:
        return
    _route_to_vllm_log()
    version = "unknown"
    try:
        from . import grouped_lora

        version = _vllm_version()
        reason = _refusal(version)
        if reason is None:
            grouped_lora.install()
    except Exception as exc:  # a plugin that raises takes vLLM down with it
        reason = f"{type(exc).__name__}: {exc}"
    if reason is None:
        logger.info("adaptserve engine plugin: grouped CPU LoRA ops active (vLLM %s)", version)
        _write_status(True, version, "self-check passed; punica_cpu uses the grouped ops")
    else:
        logger.warning("adaptserve engine plugin: grouped CPU LoRA ops NOT active (vLLM %s): %s", version, reason)
        _write_status(False, version, reason)


def _vllm_version() -> str:
    from vllm.version import __version__

    return str(__version__)


def _refusal(version: str) -> str | None:
    """Why this process must keep vLLM's ops, or None if the grouped ops may go in."""
    match = re.match(r"(\d+)\.(\d+)\.", version)
    if match is None or (int(match[1]), int(match[2])) not in KNOWN_VLLM:
        known = ", ".join(f"{major}.{minor}.x" for major, minor in KNOWN_VLLM)
        return f"vLLM {version} is not a version this plugin knows ({known})"
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return f"the platform is {type(current_platform).__name__}, not CPU"
    failure = _self_check()
    return None if failure is None else f"self-check failed: {failure}"


_OUT = object()  # stands for the output tensor in a self-check case's arguments


def _self_check() -> str | None:
    """Compare the grouped ops with vLLM's on small random batches; return what differs, or None.

    Two slots with tokens, one without, and rows with no adapter (-1), in fp32 and bf16: rows with an adapter must
    match vLLM's, rows without must be untouched (adding) or zero (assigning); then the fused `add_lora_linear`
    against vLLM's. Well under a second on one thread.
    """
    import torch
    from vllm.lora.ops.torch_ops import lora_ops as reference

    from . import grouped_lora

    generator = torch.Generator().manual_seed(15)  # never the global RNG: vLLM's sampling seeds stay as they were
    try:
        for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
            tokens, cases = _self_check_cases(dtype, generator)
            adapter = tokens >= 0
            for name, args, start, columns, add_inputs in cases:
                want, got = start.clone(), start.clone()
                getattr(reference, name)(*(want if a is _OUT else a for a in args))
                getattr(grouped_lora, name)(*(got if a is _OUT else a for a in args))
                untouched = start.clone()
                if not add_inputs:
                    untouched[:, columns] = 0
                if not torch.allclose(got[adapter].float(), want[adapter].float(), atol=tolerance, rtol=tolerance):
                    return f"{name} ({dtype}) differs from vLLM's on rows with an adapter"
                if not torch.equal(got[~adapter], untouched[~adapter]):
                    return f"{name} ({dtype}) changed rows with no adapter"
        return _check_fused_linear(generator)
    finally:
        grouped_lora.clear_group_cache()


def _check_fused_linear(generator: torch.Generator) -> str | None:
    """The fused `add_lora_linear` against vLLM's (over vLLM's ops) on a mixed prefill batch whose slots interleave
    (rows gathered, not sliced), q/k/v-shaped (one block-diagonal expand) and with outputs past
    `BLOCK_DIAGONAL_MACS` (an expand per slice): rows with an adapter agree, the others are untouched."""
    import torch
    from vllm.lora.layers import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from . import fused_linear

    ids = (0, 7, 9, 7, *(9,) * 36, 7, 0)  # per token: LoRA ids (0: the base model); 7's and 9's rows interleave
    requests = (0, 7, 9, 7, 9, 7, 0)
    wrapper = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=8, device="cpu")
    wrapper.update_metadata(LoRAMapping(ids, requests, is_prefill=True), [9, None, 7, None], 4, 1000)
    adapter = torch.tensor(ids) != 0
    for slices in ((32, 8, 8), (4096, 4096)):  # 36 rows x rank 8 x 8,192 columns: past BLOCK_DIAGONAL_MACS
        x = torch.randn(len(ids), 32, generator=generator).to(torch.bfloat16)
        a = tuple(torch.randn(4, 1, 8, 32, generator=generator).to(torch.bfloat16) for _ in slices)
        b = tuple(torch.randn(4, 1, n, 8, generator=generator).to(torch.bfloat16) for n in slices)
        start = torch.randn(len(ids), sum(slices), generator=generator).to(torch.bfloat16)
        want, got = start.clone(), start.clone()
        fused_linear.vllm_add_lora_linear()(wrapper, want, x, a, b, 1.0, slices)
        fused_linear.add_lora_linear(wrapper, got, x, a, b, 1.0, slices)
        if not torch.allclose(got[adapter].float(), want[adapter].float(), atol=5e-2, rtol=5e-2):
            return f"add_lora_linear {slices} differs from vLLM's on rows with an adapter"
        if not torch.equal(got[~adapter], start[~adapter]):
            return f"add_lora_linear {slices} changed rows with no adapter"
    return None


def _self_check_cases(
    dtype: torch.dtype, generator: torch.Generator
) -> tuple[torch.Tensor, list[tuple[str, tuple[object, ...], torch.Tensor, slice, bool]]]:
    """The token slots, and (op, arguments, output's start, the columns it writes, whether it adds) per op."""
    import torch

    # slot 2 has no tokens; slot 1's rows are not contiguous; slot 0's 34 rows take the large-group matmul
    seq_slots, seq_lens = torch.tensor([1, -1, 0, 1, -1]), torch.tensor([3, 1, 34, 2, 2])
    tokens = torch.repeat_interleave(seq_slots, seq_lens)
    n = tokens.numel()
    prefill = (torch.cumsum(seq_lens, 0) - seq_lens, seq_lens, seq_slots, seq_slots.numel(), int(seq_lens.max()), n)

    def randn(*shape: int, scale: float = 1.0, to: torch.dtype = dtype) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(to)

    x, buffer = randn(n, 32), randn(n, 8, to=torch.float32)
    lora_a, lora_b = randn(3, 1, 8, 32, scale=0.2), randn(3, 1, 24, 8, scale=0.3)
    fp32 = torch.float32
    return tokens, [
        ("bgmv_shrink", (x, lora_a, _OUT, tokens, 0.5), randn(n, 8, to=fp32), slice(0, 8), False),
        ("sgmv_shrink", (x, lora_a, _OUT, *prefill, 0.5), randn(n, 8, to=fp32), slice(0, 8), False),
        ("bgmv_expand", (buffer, lora_b, _OUT, tokens, True), randn(n, 24), slice(0, 24), True),
        ("sgmv_expand", (buffer, lora_b, _OUT, *prefill, False), randn(n, 24), slice(0, 24), False),
        ("bgmv_expand_slice", (buffer, lora_b, _OUT, tokens, 8, 24, True), randn(n, 40), slice(8, 32), True),
        ("sgmv_expand_slice", (buffer, lora_b, _OUT, *prefill, 16, 24, False), randn(n, 40), slice(16, 40), False),
    ]


def _route_to_vllm_log() -> None:
    """vLLM configures only the `vllm` logger; without a root handler our records would be dropped, so use its."""
    if logger.handlers or logging.getLogger().handlers:
        return
    handlers = logging.getLogger("vllm").handlers
    for handler in handlers:
        logger.addHandler(handler)
    if handlers:
        logger.setLevel(logging.INFO)  # the handler applies vLLM's level


def _write_status(active: bool, version: str, reason: str) -> None:
    """Write this process's verdict to `<ADAPTSERVE_ENGINE_PLUGIN_STATUS>.<pid>.json`, atomically."""
    base = os.environ.get(STATUS_ENV)
    if not base:
        return
    pid = os.getpid()
    status = {
        "plugin": PLUGIN,
        "active": active,
        "vllm": version,
        "reason": reason,
        "pid": pid,
        "process": multiprocessing.current_process().name,
    }
    path = f"{base}.{pid}.json"
    try:
        with open(f"{path}.tmp", "w", encoding="utf-8") as file:
            json.dump(status, file)
        os.replace(f"{path}.tmp", path)
    except OSError as exc:
        logger.warning("adaptserve engine plugin: could not write its status to %s: %s", path, exc)
