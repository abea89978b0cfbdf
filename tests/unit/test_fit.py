"""`adaptserve fit` without the engine: the calibration choices it makes on labelled
data (a temperature that fixes over-confidence, calibration only where it helps),
stratified folds, the TF-IDF baseline, and the command end to end against the
gateway in front of the fake vLLM: the table, the report, the served template, a
re-run that resumes instead of recomputing, and the temperature a template carries."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.cli import main
from adaptserve.errors import ConfigurationError, InvalidRequestError
from adaptserve.fit import baselines
from adaptserve.fit.folds import Folds, balanced_sample
from adaptserve.templates.calibration import accuracy, bias_of, choose, fit_temperature, log_loss, probabilities
from adaptserve.templates.spec import parse_document
from tests.helpers import ADMIN_KEY, API_KEY, RunningGateway


def _overconfident(n: int, scale: float, seed: int = 0) -> tuple[list[list[float]], list[int]]:
    """Two-label rows whose true probability of label 1 is p, reported as logits × scale."""
    rng = random.Random(seed)
    rows, gold = [], []
    for _ in range(n):
        p = rng.uniform(0.05, 0.95)
        gold.append(1 if rng.random() < p else 0)
        rows.append([0.0, scale * math.log(p / (1 - p))])
    return rows, gold


def test_the_fitted_temperature_undoes_over_confidence() -> None:
    rows, gold = _overconfident(4000, scale=3.0)
    t = fit_temperature(rows, gold)
    assert 2.4 < t < 3.8
    assert log_loss([probabilities(r, t) for r in rows], gold) < log_loss([probabilities(r) for r in rows], gold)


def test_calibration_is_chosen_where_it_helps_and_left_out_where_it_hurts() -> None:
    # A model biased towards label 1 by +2 nats: content-free inputs show the bias; dividing it out helps.
    rows, gold = _overconfident(400, scale=1.0, seed=1)
    biased = [[a, b + 2.0] for a, b in rows]
    neutral_inputs = [[0.0, 2.0]] * 3
    scoring, seen = choose(biased, gold, {"content-free": neutral_inputs})
    assert scoring.calibration == "content-free"
    assert seen["content-free"]["accuracy"] > seen["none"]["accuracy"]
    # A confident, right model whose content-free answer is lopsided (a trained adapter's
    # case): dividing that out flips right answers, so calibration stays off.
    confident = [[0.0, 6.0] if g else [4.0, 0.0] for g in gold]
    scoring, seen = choose(confident, gold, {"content-free": [[0.0, 9.0]]})
    assert scoring.calibration is None
    assert seen["none"]["accuracy"] == 1.0 > seen["content-free"]["accuracy"]


def test_the_bias_is_the_mean_distribution_at_the_temperature() -> None:
    assert bias_of([[0.0, 0.0], [0.0, math.log(3)]]) == pytest.approx([0.375, 0.625])
    assert bias_of([[0.0, math.log(9)]], temperature=2.0) == pytest.approx([0.25, 0.75])
    assert accuracy([[0.2, 0.8], [0.9, 0.1]], [1, 1]) == 0.5


def test_rare_labels_are_noted_and_a_one_label_fold_refused() -> None:
    labels = ["a"] * 20 + ["b"] * 10 + ["c"]  # c: in one fold's test only, as scikit-learn does
    folds = Folds.stratified(labels)
    assert folds.thin(labels) == ["label 'c' has 1 example(s): fewer than the 4 folds"]
    assert sum("c" in {labels[i] for i in folds.test(f)} for f in range(4)) == 1
    two = ["a"] * 20 + ["b"]
    with pytest.raises(ConfigurationError, match="one label"):
        Folds.stratified(two).thin(two)
    with pytest.raises(ConfigurationError):
        Folds.stratified(["a", "b"] * 10, k=1)
    assert len(Folds.stratified(["a", "b"] * 600, k=5)) == 5  # an explicit k is k folds, however large the data


def test_a_template_without_a_temperature_keeps_its_digest() -> None:
    doc = {"name": "t", "kind": "classify", "instruction": "x", "inputs": {"text": {}}}
    doc["labels"] = [{"name": "a"}, {"name": "b"}]
    spec = parse_document(doc)
    assert "temperature" not in spec.document()  # stored versions' digests (and calibrations) stay valid
    assert (
        parse_document(doc | {"temperature": 1.0}).digest
        == spec.digest
        != parse_document(doc | {"temperature": 2}).digest
    )


def test_folds_are_stratified_disjoint_and_fixed() -> None:
    labels = ["a"] * 60 + ["b"] * 20 + ["c"] * 8
    folds = Folds.stratified(labels, seed=3)
    assert len(folds) == 4
    tested = [i for f in range(4) for i in folds.test(f)]
    assert sorted(tested) == list(range(len(labels)))
    for f in range(4):
        counts = Counter(labels[i] for i in folds.test(f))
        assert counts["a"] == 15 and counts["b"] == 5 and counts["c"] == 2
        assert not set(folds.test(f)) & set(folds.train(f))
    assert Folds.stratified(labels, seed=3) == folds != Folds.stratified(labels, seed=4)
    big = Folds.stratified(["a", "b"] * 600)
    assert len(big) == 1 and len(big.test(0)) == 240
    sample = balanced_sample(list(range(len(labels))), labels, 4, seed=0)
    assert Counter(labels[i] for i in sample) == {"a": 4, "b": 4, "c": 4}


def test_the_tfidf_baseline_learns_a_separable_task() -> None:
    train = [f"refund now {i}" for i in range(10)] + [f"lovely weather {i}" for i in range(10)]
    labels = ["spam"] * 10 + ["ham"] * 10
    fitted = baselines.run("tfidf-word", train, labels, ["please refund", "what weather"], ["ham", "spam"])
    assert [max(range(2), key=row.__getitem__) for row in fitted.probabilities] == [1, 0]
    assert all(sum(row) == pytest.approx(1.0) for row in fitted.probabilities)


def test_a_template_carries_a_temperature_for_classify_only() -> None:
    doc = {"name": "t", "kind": "classify", "instruction": "x", "inputs": {"text": {}}}
    doc["labels"] = [{"name": "a"}, {"name": "b"}]
    assert parse_document(doc | {"temperature": 2.5}).temperature == 2.5
    with pytest.raises(InvalidRequestError):
        parse_document(doc | {"temperature": 0})
    generate = {"name": "g", "kind": "generate", "instruction": "x", "inputs": {"text": {}}, "temperature": 2.0}
    with pytest.raises(InvalidRequestError, match="temperature"):
        parse_document(generate)


def _write_task(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        label = "good" if i % 2 else "bad"
        rows.append({"text": f"{label} {label} item {i}", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fit(gateway: RunningGateway, data: Path, out: Path, *extra: str) -> int:
    argv = ["fit", "--data", str(data), "--candidates", "tfidf-word,zero-shot,few-shot", "--out", str(out)]
    argv += ["--url", gateway.url, "--key", API_KEY, "--admin-key", ADMIN_KEY, "--name", "goodbad", *extra]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return int(exited.value.code or 0)


def test_fit_measures_serves_and_resumes(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gateway = start_gateway()
    data, out = _write_task(tmp_path / "task.jsonl", 32), tmp_path / "fit"
    assert _fit(gateway, data, out) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "fit-manifest.json").read_text())
    rows = {r["candidate"]: r for r in manifest["candidates"]}
    assert set(rows) == {"tfidf-word", "zero-shot"}
    # The fake's context is 64 words: eight examples do not fit, and fit says so and goes on.
    assert "few-shot fold 0: failed, left out" in manifest["notes"][0] and "context length" in manifest["notes"][0]
    assert all(r["folds"] == [0, 1, 2, 3] and r["n"] == 32 for r in rows.values())
    # The fake engine scores a label by how often its word is in the prompt: the text says it twice.
    assert rows["zero-shot"]["accuracy"] == 1.0
    assert manifest["decision"]["llm"] == "zero-shot"
    served = manifest["served"]
    assert served["template"] == "goodbad" and served["fold0_accuracy_served"] == served["fold0_accuracy_measured"]
    # The served endpoint's probabilities are fit's, to rounding: its calibration and temperature too.
    zero = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    zero = [u for u in zero if u["candidate"] == "zero-shot"]
    assert served["fold0_largest_probability_gap"] < 1e-6
    assert any(u["scoring"]["temperature"] != 1.0 or u["scoring"]["calibration"] for u in zero)
    # Scoring was chosen on inputs outside the test fold.
    assert all(not set(u["test"]) & (set(u["selection"]) | set(u["calibration_inputs"])) for u in zero)
    assert "| zero-shot | 0,1,2,3 | 32 | 1.000 |" in printed
    assert (out / "report.png").stat().st_size > 1000 and "<table" in (out / "report.html").read_text()
    # The served template is the tenant's, and answers like any other.
    answer = gateway.post("/v1/templates/goodbad", {"inputs": {"text": "good good"}}).json()
    assert answer["label"] == "good"
    # The candidates' own templates are gone.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    listed = httpx.get(gateway.url + "/v1/templates", headers=headers, timeout=10).json()["data"]
    assert not [t for t in listed if t["name"].startswith("fit-")]

    units = (out / "units.jsonl").read_text()
    engine_calls = len(fake.requests)
    assert _fit(gateway, data, out, "--no-serve") == 0
    assert (out / "units.jsonl").read_text() == units  # nothing recomputed
    assert json.loads((out / "fit-manifest.json").read_text())["resumed_units"] == 8
    assert len(fake.requests) == engine_calls + 1  # only the failed few-shot candidate is tried again
    other = _write_task(tmp_path / "other.jsonl", 40)
    argv = ["fit", "--data", str(other), "--candidates", "tfidf-word", "--out", str(out), "--no-serve"]
    with pytest.raises(SystemExit, match="other data"):
        main([*argv, "--url", gateway.url, "--key", API_KEY, "--admin-key", ADMIN_KEY])


def test_a_templates_temperature_softens_its_answers(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway()
    doc = {"kind": "classify", "instruction": "Good or bad?", "inputs": {"text": {}}, "calibration": False}
    doc["labels"] = [{"name": "bad"}, {"name": "good"}]
    scores = {}
    for name, t in (("sharp", 1.0), ("soft", 4.0)):
        response = gateway.admin(
            "PUT", f"/templates/{name}", content=json.dumps(doc | {"name": name, "temperature": t})
        )
        assert response.status_code == 201, response.text
        answer = gateway.post(f"/v1/templates/{name}", {"inputs": {"text": "good good good"}}).json()
        scores[name] = answer["scores"]["good"]
    assert 0.5 < scores["soft"] < scores["sharp"]


def test_eval_prints_the_baselines_beside_the_template(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gateway = start_gateway()
    doc = {"name": "gb", "kind": "classify", "instruction": "Good or bad?", "inputs": {"text": {}}}
    doc |= {"labels": [{"name": "bad"}, {"name": "good"}], "calibration": False}
    assert gateway.admin("PUT", "/templates/gb", content=json.dumps(doc)).status_code == 201
    data, out = _write_task(tmp_path / "task.jsonl", 40), tmp_path / "eval"
    argv = ["eval", "gb", "--data", str(data), "--baselines", "--url", gateway.url, "--key", API_KEY]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--out", str(out)])
    assert exited.value.code == 0
    report = json.loads((out / "gb-task.json").read_text())
    word = report["baselines"]["tfidf-word"]
    assert word["trained_on"] == "5-fold cross-validation" and word["n"] == 40
    assert word["accuracy"] == 1.0  # the label's word is in every text
    assert "| baseline tfidf-word (5-fold cross-validation) | 1.000 |" in capsys.readouterr().out


# -- whose fit's and train's pushes are, and the tenant's PII policy ---------------------------
def _no_operator_key() -> str:
    raise AssertionError("the operator's key was not needed")


def test_a_push_is_the_tenants_unless_told_global() -> None:
    from adaptserve.cli.remote import PushAs, push_as

    assert push_as("acme", None, lambda: "op", False) == PushAs("op", "acme", mint=True)  # a key of acme's made
    assert push_as("acme", "tk", _no_operator_key, False) == PushAs("tk", "acme")
    assert push_as(None, None, lambda: "op", True) == PushAs("op", None)  # global only when told
    assert push_as("acme", None, lambda: "op", True) == PushAs("op", None)
    with pytest.raises(ConfigurationError, match="--global"):
        push_as(None, None, _no_operator_key, False)  # nobody's: say whose
    with pytest.raises(ConfigurationError, match="--tenant-admin-key"):
        push_as("acme", "tk", _no_operator_key, True)


def test_train_push_makes_the_adapter_the_tenants(gateway, adapters) -> None:
    import argparse

    from adaptserve.cli.adapt import push
    from tests.helpers import call_as, tenant_admin_key

    for tenant in ("acme", "globex"):
        gateway.admin("POST", "/tenants", json={"name": tenant})
    globex = tenant_admin_key(gateway, "globex")
    args = argparse.Namespace(
        url=gateway.url, admin_key=ADMIN_KEY, tenant_admin_key=None, global_=False, name="trained", tenant="acme"
    )
    pushed = push(argparse.Namespace(**vars(args), alias="m"), gateway.settings, adapters["alpha"])
    assert pushed["tenant"] == "acme" and pushed["alias"] == "m"
    assert gateway.admin("GET", "/adapters/trained").json()["owner"] == "acme"  # not global
    assert call_as(gateway, globex, "GET", "/admin/adapters/trained").status_code == 404
    assert gateway.admin("GET", "/tenants/acme/keys").json()["data"] == []  # the push's own key is gone
    acme = tenant_admin_key(gateway, "acme")
    with_own_key = argparse.Namespace(**(vars(args) | {"tenant_admin_key": acme, "name": "trained2", "alias": None}))
    assert push(with_own_key, gateway.settings, adapters["beta"])["adapter"] == "trained2"
    assert gateway.admin("GET", "/adapters/trained2").json()["owner"] == "acme"
    told = argparse.Namespace(**(vars(args) | {"global_": True, "tenant": None, "name": "shared", "alias": None}))
    push(told, gateway.settings, adapters["beta"])
    assert gateway.admin("GET", "/adapters/shared").json()["owner"] is None


def test_fit_masks_or_refuses_personal_data_per_the_tenants_policy() -> None:
    from adaptserve.pii.data import scrub_rows, scrub_texts
    from adaptserve.pii.detector import Detector
    from adaptserve.pii.policy import PiiPolicy

    texts = ["mail alice.smith@example.com about it", "nothing here"]
    detector = Detector()
    masked, note = scrub_texts(texts, PiiPolicy(mode="mask"), detector)
    assert masked == ["mail <EMAIL_ADDRESS_1> about it", "nothing here"]
    assert note and "EMAIL_ADDRESS" in note and "1 of 2" in note
    with pytest.raises(ConfigurationError, match="EMAIL_ADDRESS") as refused:
        scrub_texts(texts, PiiPolicy(mode="block"), detector)
    assert "alice" not in str(refused.value)
    assert scrub_texts(texts, PiiPolicy(mode="log"), detector) == (texts, None)  # passed as sent, like requests
    custom = PiiPolicy(mode="mask", deny_list=("Zorblax",))
    assert "Zorblax" not in scrub_texts(["ask Zorblax"], custom, detector)[0][0]
    # train's rows: every string masked (inputs, prompt, completion), the label kept as it is
    rows = [
        {"inputs": {"text": "from bob@example.com", "n": 3}, "label": "bob@example.com"},
        {"prompt": "write to carol@example.com", "completion": "done, carol@example.com"},
    ]
    kept, note = scrub_rows(rows, PiiPolicy(mode="mask"), detector)
    assert kept == [
        {"inputs": {"text": "from <EMAIL_ADDRESS_1>", "n": 3}, "label": "bob@example.com"},
        {"prompt": "write to <EMAIL_ADDRESS_1>", "completion": "done, <EMAIL_ADDRESS_1>"},
    ]


def test_fit_stores_and_serves_no_personal_data_under_mask(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptserve.bench import fake_engine

    monkeypatch.setattr(fake_engine, "MAX_MODEL_LEN", 2048)  # few-shot's eight examples fit
    gateway = start_gateway()
    assert gateway.admin("PUT", "/tenants/default/pii", json={"mode": "mask"}).status_code == 200
    rows = []
    for i in range(32):
        label = "good" if i % 2 else "bad"
        rows.append({"text": f"{label} {label} w{i} p{i}@example.com", "label": label})  # short: few-shot fits
    data, out = tmp_path / "task.jsonl", tmp_path / "fit"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["fit", "--data", str(data), "--candidates", "tfidf-word,zero-shot,few-shot", "--out", str(out)]
    argv += ["--url", gateway.url, "--key", API_KEY, "--admin-key", ADMIN_KEY, "--name", "goodbad"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code in (0, None)
    stored = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".jsonl", ".json", ".html"))
    assert "@example.com" not in stored
    units = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    shots = [e["inputs"]["text"] for u in units if u["candidate"] == "few-shot" for e in u["document"]["examples"]]
    assert shots and all(text.endswith(" <EMAIL_ADDRESS_1>") for text in shots)  # trained, stored as masked
    served = gateway.admin("GET", "/templates/goodbad", params={"tenant": "default"}).text
    assert "@example.com" not in served
    assert json.loads((out / "fit-manifest.json").read_text())["data"]["pii"].startswith("personal data masked")
