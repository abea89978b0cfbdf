"""Adapter algebra (`adapters/algebra.py`) against dense numpy arithmetic, and the admin
routes that register its results: SVD reduction and merges as new adapter versions."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from adaptserve.adapters import algebra
from tests.helpers import ADMIN_KEY, assert_openai_error, make_adapter, tenant_admin_key, upload


def deltas(lora: algebra.Lora) -> dict[str, np.ndarray]:
    return {m: b.astype(np.float64) @ a for m, (a, b) in lora.modules.items()}


def stored(gateway, name: str, version: str) -> Path:
    """A registered version's folder in the gateway's store (the store is content-addressed)."""
    versions = gateway.admin("GET", f"/adapters/{name}").json()["versions"]
    digest = next(v["digest"] for v in versions if v["version"] == version)
    return gateway.settings.data_dir / "adapters" / digest


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_reading_folds_peft_scaling_in(tmp_path) -> None:
    folder = make_adapter(tmp_path / "a", r=4, lora_alpha=8, alpha_pattern={"v_proj": 2})
    lora = algebra.read_lora(folder)
    _, b = lora.modules["model.layers.0.self_attn.q_proj"]
    raw = algebra._read_safetensors(folder / "adapter_model.safetensors")
    stem = "base_model.model.model.layers.0.self_attn"
    np.testing.assert_allclose(b, raw[f"{stem}.q_proj.lora_B.weight"] * 2.0)  # 8 / 4
    _, b_v = lora.modules["model.layers.0.self_attn.v_proj"]
    np.testing.assert_allclose(b_v, raw[f"{stem}.v_proj.lora_B.weight"] * 0.5)  # the pattern's 2 / 4
    rs = algebra.read_lora(make_adapter(tmp_path / "rs", r=4, lora_alpha=8, use_rslora=True))
    np.testing.assert_allclose(
        rs.modules["model.layers.0.self_attn.q_proj"][1], raw[f"{stem}.q_proj.lora_B.weight"] * 4.0
    )


def test_bf16_weights_read_as_their_float32_values(tmp_path) -> None:
    values = np.array([[1.0, -2.5], [0.15625, 3e-3]], np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bf16 except the last, truncated
    header = json.dumps({"t": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    got = algebra._read_safetensors(path)["t"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, values, rtol=2**-7)
    assert got[0, 0] == 1.0 and got[0, 1] == -2.5


def test_svd_to_a_rank_is_the_best_approximation_and_reports_its_error(tmp_path) -> None:
    lora = algebra.read_lora(make_adapter(tmp_path / "a", r=8, targets=("q_proj", "o_proj")))
    exact = deltas(lora)
    reduced, fidelity = algebra.compress(lora, rank=3)
    for module, delta in exact.items():
        a, b = reduced.modules[module]
        assert a.shape[0] == b.shape[1] == 3
        s = np.linalg.svd(delta, compute_uv=False)
        want = float(np.sqrt(np.sum(s[3:] ** 2) / np.sum(s**2)))  # Eckart–Young: the tail
        assert rel_error(b.astype(np.float64) @ a, delta) == pytest.approx(want, rel=1e-4)
        assert fidelity.errors[module] == pytest.approx(want, rel=1e-4)
    full, fidelity = algebra.compress(lora, rank=8)  # full rank: the same updates
    for module, delta in exact.items():
        assert rel_error(deltas(full)[module], delta) < 1e-5
    assert fidelity.summary()["relative_error_max"] < 1e-5


def test_energy_picks_the_fewest_directions_that_keep_it(tmp_path) -> None:
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((24, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((16, 4)))
    s = np.array([4.0, 2.0, 1.0, 0.5])  # energies 16, 4, 1, 0.25 of 21.25
    lora = algebra.Lora({"m": ((v * s).T.astype(np.float32), u.astype(np.float32))}, {})
    for energy, rank in [(0.75, 1), (0.753, 2), (0.94, 2), (0.95, 3), (0.988, 3), (0.99, 4), (1.0, 4)]:
        _, fidelity = algebra.compress(lora, energy=energy)
        assert fidelity.ranks["m"] == rank, energy
        assert fidelity.energy["m"] >= energy - 1e-9
    _, fidelity = algebra.compress(lora, rank=16)  # more than it has: what it has
    assert fidelity.ranks["m"] == 4


def test_cat_is_the_exact_weighted_sum_and_linear_its_best_low_rank_approximation(tmp_path) -> None:
    one = algebra.read_lora(make_adapter(tmp_path / "1", r=4, targets=("q_proj", "v_proj"), seed=1))
    two = algebra.read_lora(make_adapter(tmp_path / "2", r=4, targets=("q_proj", "o_proj"), seed=2))
    d1, d2 = deltas(one), deltas(two)
    cat, fidelity = algebra.merge([one, two], [0.7, -0.3], "cat")
    for module, got in deltas(cat).items():
        want = 0.7 * d1.get(module, 0) + -0.3 * d2.get(module, 0)
        assert rel_error(got, want) < 1e-5, module
    assert set(cat.modules) == {m for lora in (one, two) for m in lora.modules}  # q, v and o
    assert fidelity.ranks["model.layers.0.self_attn.q_proj"] == 8
    linear, fidelity = algebra.merge([one, two], [0.7, -0.3], "linear", rank=5)
    q = "model.layers.1.self_attn.q_proj"
    want = 0.7 * d1[q] - 0.3 * d2[q]
    s = np.linalg.svd(want, compute_uv=False)
    assert rel_error(deltas(linear)[q], want) == pytest.approx(np.sqrt(np.sum(s[5:] ** 2) / np.sum(s**2)), rel=1e-4)


def test_ties_trims_elects_a_sign_and_sums_the_agreeing_entries() -> None:
    one = np.array([[3.0, -1.0], [0.1, 2.0]])
    two = np.array([[1.0, 4.0], [-0.2, -1.5]])
    # density 0.5: one keeps 3 and 2, two keeps 4 and -1.5; signs: +, +, none, + (2 - 1.5)
    np.testing.assert_allclose(algebra.ties([one, two], 0.5), [[3.0, 4.0], [0.0, 2.0]])
    # density 1: every entry; -1 (4 wins), 0.1 (-0.2 wins) and -1.5 (2 wins) are dropped,
    # and where both agree (3 and 1) they are averaged
    np.testing.assert_allclose(algebra.ties([one, two], 1.0), [[2.0, 4.0], [-0.2, 2.0]])


def test_dare_drops_and_rescales() -> None:
    delta = np.ones((200, 100))
    merged = algebra.dare([delta, 2 * delta], 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(merged, 3 * delta)  # density 1: the plain sum
    single = algebra.dare([delta], 0.25, np.random.default_rng(0))
    assert set(np.unique(single)) == {0.0, 4.0}
    assert 0.23 < np.mean(single > 0) < 0.27
    assert single.mean() == pytest.approx(1.0, abs=0.05)  # unbiased


def test_compress_registers_a_reduced_version_with_its_provenance(gateway) -> None:
    before = gateway.admin("GET", "/adapters/alpha").json()["active_version"]
    response = gateway.admin("POST", "/adapters/alpha/compress", json={"rank": 2})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rank"] == 2 and body["active_version"] == before != body["version"]  # stored, not activated
    assert body["fidelity"]["rank_max"] == 2 and 0 < body["fidelity"]["relative_error_mean"] < 1
    folder = stored(gateway, "alpha", body["version"])
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["operation"] == "compress" and provenance["sources"][0]["version"] == before
    source = algebra.read_lora(stored(gateway, "alpha", before))
    reduced = algebra.read_lora(folder)
    for module, delta in deltas(source).items():  # what is served is the best rank-2 update
        s = np.linalg.svd(delta, compute_uv=False)
        assert rel_error(deltas(reduced)[module], delta) == pytest.approx(
            np.sqrt(np.sum(s[2:] ** 2) / np.sum(s**2)), rel=1e-3
        )
    again = gateway.admin("POST", "/adapters/alpha/compress", json={"energy": 0.5, "version": before, "name": "small"})
    assert again.status_code == 201 and again.json()["active_version"] == again.json()["version"]  # a new adapter


def test_merge_registers_the_weighted_sum(gateway) -> None:
    body = {"name": "both", "sources": [{"adapter": "alpha", "weight": 0.5}, {"adapter": "beta"}], "method": "cat"}
    response = gateway.admin("POST", "/adapters/merge", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["rank"] == 8  # 4 + 4
    versions = {n: gateway.admin("GET", f"/adapters/{n}").json()["active_version"] for n in ("alpha", "beta")}
    one, two = (deltas(algebra.read_lora(stored(gateway, n, v))) for n, v in versions.items())
    merged = deltas(algebra.read_lora(stored(gateway, "both", response.json()["version"])))
    for module, got in merged.items():
        assert rel_error(got, 0.5 * one[module] + two[module]) < 1e-5
    ties = gateway.admin("POST", "/adapters/merge", json={**body, "name": "tied", "method": "ties", "rank": 2})
    assert ties.status_code == 201 and ties.json()["rank"] == 2, ties.text
    tied = deltas(algebra.read_lora(stored(gateway, "tied", ties.json()["version"])))
    for module, got in tied.items():  # the best rank-2 approximation of TIES of the weighted updates
        dense = algebra.ties([0.5 * one[module], two[module]], 0.5)
        s = np.linalg.svd(dense, compute_uv=False)
        assert rel_error(got, dense) == pytest.approx(np.sqrt(np.sum(s[2:] ** 2) / np.sum(s**2)), rel=1e-3)


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/adapters/alpha/compress", {"rank": 2, "energy": 0.9}, 400, None, None),
        ("/adapters/alpha/compress", {}, 400, None, None),
        ("/adapters/alpha/compress", {"energy": 1.5}, 400, None, "energy"),
        ("/adapters/alpha/compress", {"rank": 0}, 400, None, "rank"),
        ("/adapters/alpha/compress", {"rank": 2, "version": "nope"}, 404, "adapter_not_found", "version"),
        ("/adapters/nope/compress", {"rank": 2}, 404, "adapter_not_found", None),
        ("/adapters/merge", {"name": "m", "sources": []}, 400, None, "sources"),
        ("/adapters/merge", {"name": "m", "sources": [{"adapter": "alpha"}], "method": "mean"}, 400, None, "method"),
        ("/adapters/merge", {"name": "m", "sources": [{"adapter": "nope"}]}, 404, "adapter_not_found", None),
        ("/adapters/merge", {"name": "bad--name", "sources": [{"adapter": "alpha"}]}, 400, None, "name"),
        ("/adapters/merge", {"name": "m", "sources": [{"adapter": "alpha"}], "seed": -1}, 400, None, "seed"),
        (
            "/adapters/merge",
            {"name": "m", "sources": [{"adapter": "alpha", "weight": 1e39}]},
            400,
            None,
            "sources.0.weight",
        ),
        (
            "/adapters/merge",
            {"name": "m", "sources": [{"adapter": "alpha", "weight": 0}]},
            400,
            "invalid_adapter",
            None,
        ),
    ],
)
def test_bad_requests_get_clear_errors_and_change_nothing(shared_gateway, path, body, status, code, param) -> None:
    before = shared_gateway.admin("GET", "/adapters").json()
    assert_openai_error(shared_gateway.admin("POST", path, json=body), status, code, param)
    assert shared_gateway.admin("GET", "/adapters").json() == before


def test_a_result_above_the_servers_rank_is_refused(gateway) -> None:
    sources = [{"adapter": "alpha"}] * 5  # cat: rank 20 > max_lora_rank 16
    response = gateway.admin("POST", "/adapters/merge", json={"name": "wide", "sources": sources, "method": "cat"})
    assert_openai_error(response, 400, "invalid_adapter")
    assert "max_lora_rank" in response.json()["error"]["message"]
    assert gateway.admin("GET", "/adapters/wide").status_code == 404
    assert not [p for p in (gateway.settings.data_dir / "adapters").iterdir() if p.name.startswith(".staging")]


def test_a_tenant_admin_reduces_and_merges_what_it_sees_into_its_own(gateway) -> None:
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    key = tenant_admin_key(gateway, "acme")
    own = gateway.admin("POST", "/adapters/alpha/compress", key=key, json={"rank": 2, "name": "acme-small"})
    assert own.status_code == 201, own.text  # from a global adapter into its own
    merged = gateway.admin(
        "POST",
        "/adapters/merge",
        key=key,
        json={"name": "acme-mix", "sources": [{"adapter": "acme-small"}, {"adapter": "beta"}]},
    )
    assert merged.status_code == 201, merged.text
    listed = {a["name"] for a in gateway.admin("GET", "/adapters", key=key).json()["data"]}
    assert {"acme-small", "acme-mix"} <= listed
    assert_openai_error(
        gateway.admin("POST", "/adapters/alpha/compress", key=key, json={"rank": 2}), 409, "name_taken", "name"
    )  # global
    assert gateway.admin("GET", "/adapters/alpha", key=ADMIN_KEY).json()["versions"][-1]["rank"] == 4


def test_unreadable_sources_and_regex_patterns_are_refused_not_500s(gateway, tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    nan = make_adapter(tmp_path / "nan", seed=5)
    tensors = load_file(str(nan / "adapter_model.safetensors"))
    next(iter(tensors.values()))[0, 0] = np.nan
    save_file(tensors, str(nan / "adapter_model.safetensors"))
    assert upload(gateway, "nan", nan).status_code == 201  # validation reads headers, not values
    response = gateway.admin("POST", "/adapters/nan/compress", json={"rank": 2})
    assert_openai_error(response, 400, "invalid_adapter")
    assert "not finite" in response.json()["error"]["message"]
    hostile = make_adapter(tmp_path / "regex", alpha_pattern={"(.*.*.*)*Z": 4})
    refused = upload(gateway, "regex", hostile)
    assert_openai_error(refused, 400, "invalid_adapter")
    assert "not a module name" in refused.json()["error"]["message"]


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_a_tenants_derivations_count_against_its_storage_quota(start_gateway, adapters) -> None:
    quota = int(1.5 * _folder_bytes(adapters["alpha"]))  # room for one rank-4 copy of alpha, not two
    gateway = start_gateway(adapters=adapters, max_adapter_storage_bytes_per_tenant=quota)
    for tenant in ("acme", "globex"):
        gateway.admin("POST", "/tenants", json={"name": tenant})
    acme, globex = tenant_admin_key(gateway, "acme"), tenant_admin_key(gateway, "globex")
    first = gateway.admin("POST", "/adapters/alpha/compress", key=acme, json={"rank": 4, "name": "acme-a"})
    assert first.status_code == 201, first.text
    over = gateway.admin("POST", "/adapters/beta/compress", key=acme, json={"rank": 4, "name": "acme-b"})
    error = assert_openai_error(over, 507, "storage_quota_exceeded")
    assert "acme" in error["message"] and str(quota) in error["message"]
    assert gateway.admin("GET", "/adapters/acme-b").status_code == 404  # nothing stored
    assert not [p for p in (gateway.settings.data_dir / "adapters").iterdir() if p.name.startswith(".staging")]
    merged = gateway.admin(
        "POST", "/adapters/merge", key=acme, json={"name": "acme-m", "sources": [{"adapter": "beta"}]}
    )
    assert_openai_error(merged, 507, "storage_quota_exceeded")
    # An upload of its own counts the same; another tenant and the operator are not affected.
    assert_openai_error(upload(gateway, "acme-up", adapters["beta"], key=acme), 507, "storage_quota_exceeded")
    other = gateway.admin("POST", "/adapters/beta/compress", key=globex, json={"rank": 4, "name": "globex-b"})
    assert other.status_code == 201, other.text
    assert gateway.admin("POST", "/adapters/beta/compress", json={"rank": 4, "name": "op-b"}).status_code == 201
    # Deleting frees the room.
    assert gateway.admin("DELETE", "/adapters/acme-a", key=acme).status_code == 204
    again = gateway.admin("POST", "/adapters/beta/compress", key=acme, json={"rank": 4, "name": "acme-b"})
    assert again.status_code == 201, again.text


def test_one_derivation_at_a_time_per_tenant_and_others_go_on(gateway, monkeypatch) -> None:
    import threading

    started, release = threading.Event(), threading.Event()
    real, calls = algebra.compress_into, []

    def held_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            started.set()
            release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(algebra, "compress_into", held_first)
    for tenant in ("acme", "globex"):
        gateway.admin("POST", "/tenants", json={"name": tenant})
    acme, globex = tenant_admin_key(gateway, "acme"), tenant_admin_key(gateway, "globex")
    results: list = []
    body = {"rank": 2, "name": "acme-one"}
    running = threading.Thread(
        target=lambda: results.append(gateway.admin("POST", "/adapters/alpha/compress", key=acme, json=body))
    )
    running.start()
    try:
        assert started.wait(30)
        second = gateway.admin("POST", "/adapters/beta/compress", key=acme, json={"rank": 2, "name": "acme-two"})
        assert_openai_error(second, 429, "derivation_in_progress")
        assert second.headers["retry-after"]
        other = gateway.admin("POST", "/adapters/beta/compress", key=globex, json={"rank": 2, "name": "globex-two"})
        assert other.status_code == 201, other.text  # another tenant's derivation is not held up
    finally:
        release.set()
        running.join(60)
    assert results and results[0].status_code == 201, results[0].text
    after = gateway.admin("POST", "/adapters/beta/compress", key=acme, json={"rank": 2, "name": "acme-two"})
    assert after.status_code == 201, after.text  # the slot is free again


def test_a_dense_merge_over_the_memory_bound_is_refused_before_it_is_computed(start_gateway, adapters, monkeypatch):
    gateway = start_gateway(adapters=adapters, max_merge_dense_bytes=16_384)
    formed: list = []
    monkeypatch.setattr(algebra, "ties", lambda *a: formed.append(a))
    monkeypatch.setattr(algebra, "dare", lambda *a: formed.append(a))
    sources = [{"adapter": "alpha"}, {"adapter": "beta"}]
    for method in ("ties", "dare"):
        refused = gateway.admin("POST", "/adapters/merge", json={"name": "big", "sources": sources, "method": method})
        error = assert_openai_error(refused, 413, "merge_too_large", "method")
        assert "linear" in error["message"]
    assert formed == [] and gateway.admin("GET", "/adapters/big").status_code == 404
    linear = gateway.admin("POST", "/adapters/merge", json={"name": "big", "sources": sources, "method": "linear"})
    assert linear.status_code == 201, linear.text  # factored: never dense


def test_the_dense_estimate_of_a_7b_merge_is_gigabytes() -> None:
    shapes = {"mlp.down_proj": (4096, 11008), "self_attn.q_proj": (4096, 4096)}
    ties = algebra.dense_bytes(shapes, sources=2, method="ties")
    assert ties >= 4096 * 11008 * 8 * 8  # several float64 copies of the largest module
    assert algebra.dense_bytes(shapes, sources=2, method="dare") < ties
    assert algebra.dense_bytes(shapes, sources=2, method="linear") == 0
