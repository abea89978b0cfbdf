"""`adaptserve compress prune` on a tiny random Llama built here (no engine, no shipped
weights): the block-influence scores find a layer that does nothing and the run drops
it without changing a logit; the folder surgery keeps dtypes, heads and shards; the
distillation loss; healing lowers it; an interrupted or extended healing run resumes
to the same weights as one run straight through, and other settings are refused; the
command end to end; and adapters made for the unpruned base are refused on the pruned one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adaptserve.adapters.spec import AdapterInvalidError, BaseModelSpec, validate_adapter
from adaptserve.cli import main
from adaptserve.compress import data, prune, scoring, surgery
from adaptserve.compress.heal import HealConfig, Healer, kd_loss, mean_kd
from adaptserve.errors import ConfigurationError
from tests.helpers import make_adapter, make_base, make_tiny_llama, tiny_texts

NOOP = 2  # the tiny model's layer that returns its input


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny", layers=6, noop_layer=NOOP)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text("\n".join(tiny_texts(120, seed=1)) + "\n")
    return path


def _job(tiny: Path, out: Path, text_file: Path, drop: int = 1, **heal: Any) -> prune.Job:
    config = HealConfig(**({"batch_size": 2, "max_length": 48, "lr": 1e-3, "save_every": 2} | heal))
    return prune.Job(tiny, out, drop, str(text_file), samples=64, heal=config, threads=1, held_out=8)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_the_no_op_layer_scores_lowest_and_dropping_it_changes_no_logit(
    tiny: Path, text_file: Path, tmp_path: Path
) -> None:
    folder, manifest = prune.run(_job(tiny, tmp_path / "pruned", text_file))
    scores = manifest["layer_scores"]
    assert len(scores) == 6 and abs(scores[NOOP]) < 1e-6
    assert min(s for i, s in enumerate(scores) if i != NOOP) > 1e-2
    assert (manifest["dropped"], manifest["kept_layers"], manifest["kept"]) == ([NOOP], [0, 1, 3, 4, 5], 5)
    assert list(tmp_path.iterdir()) == [folder]  # no staging folder left, no checkpoint without healing
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(p.name for p in tiny.iterdir()), "manifest.json"]
    )  # tokenizer and generation files copied
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["tie_word_embeddings"]) == (5, True)
    before, after = _tensors(tiny), _tensors(folder)
    assert "lm_head.weight" not in after and {k.split(".")[2] for k in after if ".layers." in k} == set("01234")
    assert torch.equal(after["model.layers.2.mlp.up_proj.weight"], before["model.layers.3.mlp.up_proj.weight"])
    assert after["model.embed_tokens.weight"].dtype == torch.float32

    from transformers import LlamaForCausalLM

    pruned, original = LlamaForCausalLM.from_pretrained(folder).eval(), scoring.load_model(tiny)
    assert len(pruned.model.layers) == 5
    tokenizer = scoring.load_tokenizer(tiny)
    ids, mask = data.padded(data.rows(tokenizer, tiny_texts(4, seed=7), 64), data.pad_id(tokenizer))
    with torch.no_grad():
        got, want = (
            pruned(input_ids=ids, attention_mask=mask).logits,
            original(input_ids=ids, attention_mask=mask).logits,
        )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    ppl = manifest["perplexity"]
    assert ppl["pruned"] == pytest.approx(ppl["source"], rel=1e-4) and ppl["healed"] is None
    assert manifest["heal"] is None and manifest["size_bytes"] < manifest["source_size_bytes"]


def test_surgery_keeps_dtypes_an_untied_head_and_the_shard_index(tmp_path: Path) -> None:
    """On the safetensors alone: bf16 and fp32 tensors stay as they were, lm_head stays,
    a layer in the second shard is renumbered there, the index follows, and weights in
    another format are not copied."""
    source, dest = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    dest.mkdir()
    torch.manual_seed(0)
    layer = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(4, 2) for i in range(4)}
    shards = {
        "model-00001-of-00002.safetensors": {"model.embed_tokens.weight": torch.ones(8, 2, dtype=torch.bfloat16)},
        "model-00002-of-00002.safetensors": {"lm_head.weight": torch.ones(8, 2)},
    }
    for i, (name, tensors) in enumerate(shards.items()):
        tensors |= dict(list(layer.items())[2 * i : 2 * i + 2])
        save_file(tensors, str(source / name))
    weight_map = {key: name for name, tensors in shards.items() for key in tensors}
    (source / surgery.INDEX).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    config = {"num_hidden_layers": 4, "tie_word_embeddings": False, "layer_types": ["a", "b", "c", "d"]}
    (source / "config.json").write_text(json.dumps(config))
    (source / "pytorch_model.bin").write_bytes(b"unpruned")
    (source / "tokenizer.json").write_text("{}")
    assert surgery.write_pruned(source, dest, [0, 3]) == [1, 2]
    config = json.loads((dest / "config.json").read_text())
    assert (config["num_hidden_layers"], config["layer_types"], config["tie_word_embeddings"]) == (2, ["b", "c"], False)
    assert not (dest / "pytorch_model.bin").exists() and (dest / "tokenizer.json").is_file()
    with safe_open(str(dest / "model-00002-of-00002.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["lm_head.weight", "model.layers.1.mlp.up_proj.weight"]
        assert torch.equal(
            f.get_tensor("model.layers.1.mlp.up_proj.weight"), layer["model.layers.2.mlp.up_proj.weight"]
        )
    with safe_open(str(dest / "model-00001-of-00002.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    index = json.loads((dest / surgery.INDEX).read_text())
    assert index["weight_map"] == {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.layers.1.mlp.up_proj.weight": "model-00002-of-00002.safetensors",
    }
    assert index["metadata"]["total_size"] == 8 * 2 * 2 + 8 * 2 * 4 + 2 * 4 * 2 * 4
    with pytest.raises(ConfigurationError, match="leave none"):
        surgery.kept_layers(2, [0, 1])


def test_the_distillation_loss_is_the_tempered_kl_over_real_tokens() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert float(kd_loss(teacher, teacher, mask, 1.0)) == pytest.approx(0.0, abs=1e-6)
    p, q = torch.softmax(teacher / 2, -1), torch.softmax(student / 2, -1)
    per_token = (p * (p.log() - q.log())).sum(-1)
    want = float(per_token[mask.bool()].mean()) * 4
    assert float(kd_loss(student, teacher, mask, 2.0)) == pytest.approx(want, rel=1e-5)
    noise = student.clone()
    noise[1, 3:] += 100 * torch.randn(2, 11)  # padding: its logits count for nothing
    assert float(kd_loss(noise, teacher, mask, 2.0)) == pytest.approx(want, rel=1e-5)


def test_healing_lowers_the_distillation_loss(tiny: Path, text_file: Path, tmp_path: Path) -> None:
    folder, manifest = prune.run(_job(tiny, tmp_path / "healed", text_file, drop=2, steps=40))
    assert NOOP in manifest["dropped"] and len(manifest["dropped"]) == 2  # the no-op, and a layer that works
    kd = manifest["heal"]["kd_loss"]
    assert kd["before"] > 0.01 and kd["after"] < 0.5 * kd["before"]
    curve = manifest["heal"]["curve"]
    assert [step for step, _ in curve] == list(range(1, 41))
    assert manifest["perplexity"]["healed"] is not None
    # The folder holds the healed weights: reloaded, it scores what the run measured.
    tokenizer = scoring.load_tokenizer(tiny)
    probe = data.windows(tokenizer, data.texts(str(text_file)), 48)[: prune.PROBE_WINDOWS]
    reloaded = mean_kd(scoring.load_model(tiny), scoring.load_model(folder), probe, data.pad_id(tokenizer), 1.0)
    assert reloaded == pytest.approx(kd["after"], rel=1e-5)


def test_an_interrupted_or_extended_healing_run_resumes_to_the_same_weights(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    straight, manifest = prune.run(_job(tiny, tmp_path / "straight", text_file, drop=2, steps=6))
    # Extended: a finished 4-step run given 6 continues from its step-4 checkpoint.
    extended, _ = prune.run(_job(tiny, tmp_path / "extended", text_file, drop=2, steps=4))
    capsys.readouterr()
    extended, extended_manifest = prune.run(_job(tiny, tmp_path / "extended", text_file, drop=2, steps=6))
    assert "resuming healing from step 4" in capsys.readouterr().out
    # Interrupted: killed in step 4, after the step-2 checkpoint; the same command resumes.
    optimize = Healer.optimize

    def interrupted(self: Healer) -> float:
        if self.step == 3:
            raise KeyboardInterrupt
        return optimize(self)

    monkeypatch.setattr(Healer, "optimize", interrupted)
    job = _job(tiny, tmp_path / "cut", text_file, drop=2, steps=6)
    with pytest.raises(KeyboardInterrupt):
        prune.run(job)
    monkeypatch.undo()
    assert not job.out.exists() and (job.staging / ".heal" / "checkpoint.pt").is_file()
    with pytest.raises(ConfigurationError, match=r"lr: 0\.001 then, 0\.0003 now"):
        prune.run(_job(tiny, tmp_path / "cut", text_file, drop=2, steps=6, lr=3e-4))
    capsys.readouterr()
    cut, cut_manifest = prune.run(job)
    assert "resuming healing from step 2" in capsys.readouterr().out
    want = _tensors(straight)
    for folder in (extended, cut):
        got = _tensors(folder)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert extended_manifest["heal"]["curve"] == cut_manifest["heal"]["curve"] == manifest["heal"]["curve"]
    assert cut_manifest["heal"]["resumed_from"] == 2 and not job.staging.exists()


def test_a_finished_run_is_not_redone_nor_mixed_with_other_settings(
    tiny: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "done"
    prune.run(_job(tiny, out, text_file, drop=2, steps=2))
    stamp = (out / "manifest.json").stat().st_mtime_ns
    prune.run(_job(tiny, out, text_file, drop=2, steps=2))
    assert "nothing to do" in capsys.readouterr().out and (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigurationError, match=r"temperature: 1\.0 then, 2\.0 now"):
        prune.run(_job(tiny, out, text_file, drop=2, steps=4, temperature=2.0))
    with pytest.raises(ConfigurationError, match="past --heal-steps 1"):
        prune.run(_job(tiny, out, text_file, drop=2, steps=1))
    with pytest.raises(ConfigurationError, match="exists"):
        prune.run(_job(tiny, out, text_file, drop=2, steps=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]


def test_the_command_end_to_end(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("ADAPTSERVE_DATA_DIR", str(tmp_path / "data"))
    args = ["compress", "prune", "--model", str(tiny), "--calibration", str(text_file), "--samples", "32"]
    args += ["--max-length", "32", "--batch-size", "2", "--heal-steps", "2", "--threads", "1"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--target-layers", "5"])
    assert exited.value.code == 0
    out = tmp_path / "data" / "models" / "tiny-pruned1"
    printed = capsys.readouterr().out
    assert f"dropped {NOOP}" in printed and f"serve it with: adaptserve serve --model {out}" in printed
    assert "adapters trained on the unpruned base do not transfer" in printed
    assert json.loads((out / "manifest.json").read_text())["heal"]["steps"] == 2
    with pytest.raises(SystemExit) as exited:
        main([*args, "--drop", "6"])
    assert "drop 1 to 5 of them" in str(exited.value.code)
    with pytest.raises(SystemExit) as exited:
        main([*args, "--drop", "1", "--target-layers", "5"])
    assert exited.value.code == 2  # one or the other


def test_an_adapter_for_the_unpruned_base_is_refused_on_the_pruned_one(tmp_path: Path) -> None:
    base, pruned = make_base(tmp_path / "base"), tmp_path / "pruned"
    pruned.mkdir()
    surgery.write_pruned(base, pruned, [0])  # 2 layers -> 1: the adapter's layer 1 is gone
    adapter = make_adapter(tmp_path / "adapter")
    validate_adapter(adapter, BaseModelSpec.read(base), max_rank=16)
    with pytest.raises(AdapterInvalidError, match=r"the base model has no module model\.layers\.1\.self_attn"):
        validate_adapter(adapter, BaseModelSpec.read(pruned), max_rank=16)
