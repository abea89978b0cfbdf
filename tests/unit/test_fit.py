"""`adaptserve fit` without the engine: the calibration choices it makes on labelled
data (a temperature that fixes over-confidence, calibration only where it helps),
stratified folds, the TF-IDF baseline, and the command end to end against the
gateway in front of the fake vLLM: the table, the report, the served template, a
re-run that resumes instead of recomputing, and the temperature a template carries."""

from __future__ import annotations

import base64
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.cli import main
from adaptserve.datasets import Example, balanced_sample
from adaptserve.errors import ConfigurationError, InvalidRequestError
from adaptserve.fit import baselines
from adaptserve.fit.folds import Folds
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
    fitted = baselines.run("tfidf", train, labels, ["please refund", "what weather"], ["ham", "spam"])
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
    argv = ["fit", "--data", str(data), "--candidates", "majority,tfidf,zero-shot,few-shot", "--out", str(out)]
    argv += ["--url", gateway.url, "--key", API_KEY, "--admin-key", ADMIN_KEY, "--name", "goodbad", *extra]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return int(exited.value.code or 0)


def test_fit_measures_serves_and_resumes(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gateway = start_gateway()
    data, out = _write_task(tmp_path / "task.jsonl", 32), tmp_path / "fit"
    assert _fit(gateway, data, out, "--serve-llm") == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "fit-manifest.json").read_text())
    rows = {r["candidate"]: r for r in manifest["candidates"]}
    assert set(rows) == {"majority", "tfidf", "zero-shot"}
    assert rows["majority"]["accuracy"] == 0.5 and rows["tfidf"]["accuracy"] == 1.0
    # Both perfect on 32 examples: no significant difference, so the cheaper baseline is the choice.
    decision = manifest["decision"]
    assert decision["choice"] == "baseline" and decision["n"] == 32
    assert "no significant difference" in decision["verdict"] and "32 examples" in decision["verdict"]
    # The fake's context is 64 words: eight examples do not fit, and fit says so and goes on.
    assert "few-shot fold 0: failed, left out" in manifest["notes"][0] and "context length" in manifest["notes"][0]
    assert all(r["folds"] == [0, 1, 2, 3] and r["n"] == 32 for r in rows.values())
    # The fake engine scores a label by how often its word is in the prompt: the text says it twice.
    assert rows["zero-shot"]["accuracy"] == 1.0 and rows["zero-shot"]["picked_in_folds"] == [0, 1, 2, 3]
    assert manifest["decision"]["llm"] == "zero-shot"  # served anyway: --serve-llm
    served = manifest["served"]
    assert served["template"] == "goodbad" and served["agreement"] == 1.0 and served["checked_inputs"] == 8
    assert served["refit_on"] == served["chosen_on"] == 32  # its scoring chosen on every example
    # The served endpoint's probabilities are fit's, to rounding: its calibration and temperature too.
    zero = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    zero = [u for u in zero if u["candidate"] == "zero-shot"]
    assert served["largest_probability_gap"] < 1e-6
    assert any(u["scoring"]["temperature"] != 1.0 or u["scoring"]["calibration"] for u in zero)
    # Scoring was chosen on inputs outside the test fold.
    assert all(not set(u["test"]) & (set(u["selection"]) | set(u["calibration_inputs"])) for u in zero)
    assert "| zero-shot | 0,1,2,3 | 32 | 1.000 |" in printed
    assert (out / "report.png").stat().st_size > 1000 and "<table" in (out / "report.html").read_text()
    # The report is kept on the server, the tenant's, beside what was served (the console shows it).
    kept = gateway.admin("GET", "/fit-reports/goodbad", params={"tenant": "default"}).json()
    assert kept["owner"] == "default" and kept["decision"]["verdict"] == decision["verdict"]
    assert [(r["candidate"], r["accuracy"], r["accuracy_low"]) for r in kept["candidates"]] == [
        (r["candidate"], r["accuracy"], r["accuracy_low"]) for r in manifest["candidates"]
    ]
    assert base64.b64decode(kept["plot_png"]) == (out / "report.png").read_bytes()
    assert kept["served"].startswith("Served: template `goodbad` for tenant `default`")
    # The served template is the tenant's, and answers like any other.
    answer = gateway.post("/v1/templates/goodbad", {"inputs": {"text": "good good"}}).json()
    assert answer["label"] == "good"
    # The candidates' own templates are gone.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    listed = httpx.get(gateway.url + "/v1/templates", headers=headers, timeout=10).json()["data"]
    assert not [t for t in listed if t["name"].startswith("fit-")]

    units = (out / "units.jsonl").read_text()
    engine_calls = len(fake.requests)
    assert _fit(gateway, data, out) == 0
    assert (out / "units.jsonl").read_text() == units  # nothing recomputed
    again = json.loads((out / "fit-manifest.json").read_text())
    assert again["resumed_units"] == 12
    assert "served" not in again and "the baseline (tfidf) is the choice" in again["not_served"]
    assert len(fake.requests) == engine_calls + 1  # only the failed few-shot candidate is tried again
    other = _write_task(tmp_path / "other.jsonl", 40)
    argv = ["fit", "--data", str(other), "--candidates", "tfidf", "--out", str(out), "--no-serve"]
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
    tfidf, majority = report["baselines"]["tfidf"], report["baselines"]["majority"]
    assert tfidf["trained_on"] == "5-fold cross-validation" and tfidf["n"] == 40
    assert tfidf["accuracy"] == 1.0 and majority["accuracy"] == 0.5  # the label's word is in every text
    assert len(tfidf["chosen"]) == 5 and len(tfidf["predicted"]) == 40  # tuned per part; answers kept
    printed = capsys.readouterr().out
    assert "| baseline tfidf (5-fold cross-validation) | 1.000 |" in printed
    assert "| baseline majority (5-fold cross-validation) | 0.500 |" in printed
    verdict = report["verdict"]  # the template against the baseline with the best inner score, paired
    assert verdict["n"] == 40 and verdict["baseline"] in report["baselines"]
    assert verdict["text"] in printed


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
        url=gateway.url,
        admin_key=ADMIN_KEY,
        tenant_admin_key=None,
        global_=False,
        name="trained",
        tenant="acme",
        base=None,
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
    argv = ["fit", "--data", str(data), "--candidates", "tfidf,zero-shot,few-shot", "--out", str(out)]
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


# -- issue 29: tuned baselines, paired verdicts, nested selection, stratified samples --


def _cue_task(n: int, spam_share: float, seed: int) -> tuple[list[str], list[str]]:
    """Texts of eight random filler words; the spam ones add two of six cue words. On ~96
    such rows (L2-normalised TF-IDF) untuned C=1 logistic regression shrinks its weights
    until the intercept decides: everything is the majority label."""
    rng = random.Random(seed)
    filler, cues = [f"w{i}" for i in range(300)], ["prize", "win", "claim", "cash", "urgent", "free"]
    texts, labels = [], []
    for i in range(n):
        spam = i < round(n * spam_share)
        words = rng.sample(filler, 8) + (rng.sample(cues, 2) if spam else [])
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append("spam" if spam else "ham")
    return texts, labels


def test_untuned_logistic_regression_collapses_where_the_tuned_baseline_does_not() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, train_labels = _cue_task(96, 0.125, seed=0)
    test, test_labels = _cue_task(200, 0.125, seed=1)
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    untuned = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train), train_labels)
    assert set(untuned.predict(vectorizer.transform(test))) == {"ham"}  # the collapse
    fitted = baselines.run("tfidf", train, train_labels, test, ["ham", "spam"])
    predicted = [["ham", "spam"][max(range(2), key=row.__getitem__)] for row in fitted.probabilities]
    hits = sum(p == g for p, g in zip(predicted, test_labels, strict=True)) / len(test)
    assert set(predicted) == {"ham", "spam"} and hits > 0.9 > 0.875  # beats always-ham
    assert fitted.chosen["features"] in ("word", "char") and fitted.chosen["C"] in baselines.C_GRID
    assert 0.0 < fitted.inner_accuracy <= 1.0  # what inner cross-validation on the training part measured


def test_the_majority_row_answers_the_training_majority() -> None:
    fitted = baselines.run("majority", ["a", "b", "c", "d"], ["x", "x", "x", "y"], ["e", "f"], ["x", "y", "z"])
    assert fitted.probabilities == [[0.75, 0.25, 0.0]] * 2
    assert fitted.inner_accuracy == 0.75
    assert "majority" in baselines.BASELINES and "tfidf" in baselines.BASELINES


def _paired(n: int, both: int, only_a: int, only_b: int) -> tuple[list[bool], list[bool]]:
    neither = n - both - only_a - only_b
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_a_two_example_lead_on_32_is_no_significant_difference() -> None:
    from adaptserve.fit import verdict

    llm, base = _paired(32, 27, 3, 1)  # 30/32 against 28/32: 3 against 1 discordant
    assert sum(llm) == 30 and sum(base) == 28
    v = verdict.compare("lora-r16", llm, 5.0, "minilm", base, 800.0)
    assert v.n == 32 and (v.llm_only, v.baseline_only) == (3, 1)
    assert v.difference == pytest.approx(2 / 32)
    assert v.low < 0 < v.high
    assert v.p == pytest.approx(0.625)
    assert v.winner is None and v.choice == "minilm"  # no significant difference: the cheaper one
    assert "no significant difference" in v.text and "32 examples" in v.text
    assert v.more_examples == 120 - 32  # z² (discordance − d²) / d², rounded up, minus those we have
    assert "88 more" in v.text


def test_an_interval_that_ends_at_zero_says_a_few_more_examples_not_zero() -> None:
    from adaptserve.fit import verdict

    llm, base = _paired(128, 57, 15, 28)  # TREC in fit: 0.562 against 0.664, 15 against 28 discordant
    v = verdict.compare("lora-r8", llm, 5.0, "minilm", base, 800.0)
    assert v.winner is None and v.more_examples == 0 and v.high == pytest.approx(0.0)
    assert "a few more labelled examples" in v.text and "about 0 more" not in v.text


def test_a_large_clear_difference_wins() -> None:
    from adaptserve.fit import verdict

    llm, base = _paired(128, 90, 30, 2)
    v = verdict.compare("zero-shot", llm, 5.0, "tfidf", base, 800.0)
    assert v.low > 0 and v.p < 0.001
    assert v.winner == v.choice == "zero-shot" and "wins" in v.text
    reverse = verdict.compare("zero-shot", base, 5.0, "tfidf", llm, 800.0)
    assert reverse.high < 0 and reverse.winner == reverse.choice == "tfidf"
    same = verdict.compare("zero-shot", llm, 5.0, "tfidf", llm, 800.0)  # no discordant pair at all
    assert same.p == 1.0 and same.winner is None and same.more_examples is None


def test_the_exact_mcnemar_and_the_bootstrap_are_the_textbooks() -> None:
    from adaptserve.fit import verdict

    assert verdict.mcnemar_p(3, 1) == pytest.approx(0.625)
    assert verdict.mcnemar_p(0, 0) == 1.0
    assert verdict.mcnemar_p(10, 0) == pytest.approx(2 / 2**10)
    a, b = _paired(200, 150, 30, 10)
    low, high = verdict.paired_interval(a, b)
    assert low < 0.1 < high and (low, high) == verdict.paired_interval(a, b)  # seeded: the same twice
    se = math.sqrt((40 / 200 - 0.1**2) / 200)
    assert low == pytest.approx(0.1 - 1.96 * se, abs=0.01) and high == pytest.approx(0.1 + 1.96 * se, abs=0.01)


class _Guarded(dict):
    """A fit unit whose held-out predictions may not be read."""

    def __getitem__(self, key: str) -> object:
        if key in ("test", "probabilities", "logprobs"):
            raise AssertionError(f"the selection read the outer test fold ({key})")
        return super().__getitem__(key)

    def get(self, key: str, default: object = None) -> object:
        return self[key] if key in self else default  # noqa: SIM401 (through the guard)


def test_nested_selection_never_reads_an_outer_test_fold() -> None:
    from adaptserve.fit import nested

    folds = Folds.stratified(["a", "b"] * 16, k=4)
    units = {}
    for fold in range(4):
        train = folds.train(fold)
        # "good" looks better inside the training part in folds 0-1, "bad" in folds 2-3.
        for name, inner in (("good", 0.9 if fold < 2 else 0.6), ("bad", 0.6 if fold < 2 else 0.9)):
            units[(name, fold)] = _Guarded(
                kind="llm", fold=fold, inner={"accuracy": inner, "n": 8, "indices": train[:8]}, inputs_per_s=1.0
            )
    picks = nested.picks(units, ["good", "bad"], 4)
    assert picks == {0: "good", 1: "good", 2: "bad", 3: "bad"}
    for (_, fold), unit in units.items():
        assert not set(unit["inner"]["indices"]) & set(folds.test(fold))  # chosen on the training part
    # The pick's score on fold f comes from fold f's test examples only.
    gold = [0, 1] * 16
    plain = {key: dict(unit) for key, unit in units.items()}
    for (name, fold), unit in plain.items():
        right = name == "bad"  # "bad" is right on every test example, "good" on none
        unit["test"] = folds.test(fold)
        unit["probabilities"] = [[1.0, 0.0] if (gold[i] == 0) == right else [0.0, 1.0] for i in folds.test(fold)]
    correct = nested.pooled(plain, picks, gold)
    assert sorted(correct) == list(range(32))
    assert sum(correct.values()) == 16  # folds 2-3 only: the test folds did not choose "bad" in 0-1


def test_fit_tunes_baselines_on_each_folds_training_part_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptserve.fit.candidates import zero_shot
    from adaptserve.fit.run import Fit, FitConfig

    texts, labels = _cue_task(48, 0.25, seed=2)
    examples = [Example(t, label) for t, label in zip(texts, labels, strict=True)]
    seen: list[tuple[list[str], list[str]]] = []
    real = baselines.run

    def recording(
        name: str, train: list[str], train_labels: list[str], test: list[str], *rest: Any, **options: Any
    ) -> Any:
        seen.append((train, test))
        return real(name, train, train_labels, test, *rest, **options)

    monkeypatch.setattr(baselines, "run", recording)
    config = FitConfig(tmp_path, zero_shot(["ham", "spam"]), "text", candidates=("majority", "tfidf"))
    fit = Fit(examples, config, server=None)  # type: ignore[arg-type]
    fit.run()
    assert len(seen) == 8
    for (_, fold), unit in fit.units.items():
        assert sorted(unit["inner"]["indices"]) == fit.folds.train(fold)  # the inner folds' examples
    for train, test in seen:
        assert not set(train) & set(test) and len(train) + len(test) == 48


def test_the_stratified_sample_keeps_label_proportions() -> None:
    from adaptserve.datasets import stratified_head

    pool = [Example(f"t{i}", "pos" if i % 5 else "neg") for i in range(1000)]  # 80% pos
    sample = stratified_head(pool, 128)
    counts = Counter(e.label for e in sample)
    assert len(sample) == 128 and counts == {"pos": 102, "neg": 26}  # 0.8 × 128 = 102.4
    assert [e.text for e in sample if e.label == "neg"] == [e.text for e in pool if e.label == "neg"][:26]


def test_the_decision_pairs_the_picks_on_the_examples_both_answered() -> None:
    from adaptserve.fit.report import decide

    llm = {"final": "lora-r8", "picks": {0: "lora-r8", 1: "zero-shot"}, "inputs_per_s": 4.0}
    llm["correct"] = {i: True for i in range(64)}
    base = {"final": "tfidf", "picks": {1: "tfidf"}, "inputs_per_s": 900.0}
    base["correct"] = {i: i % 2 == 0 for i in range(32, 64)}  # fold 1 only: 16 of 32
    decision = decide({"llm": llm, "baseline": base})
    assert decision.n == 32 and decision.low > 0 and decision.choice == "llm"
    assert "lora-r8 wins" not in decision.verdict and "lora-r8/zero-shot wins" in decision.verdict
    assert "was the pick in folds 0 of 2" in decision.verdict and "32 examples" in decision.verdict


class _StubServer:
    """What `Fit` asks of the server, answered in-process: a label's log-probability is
    high where the text says the label."""

    tenant = "default"

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    def score(self, doc: dict[str, Any], inputs: list[dict[str, Any]]) -> Any:
        from adaptserve.fit.candidates import Scored

        labels = [label["name"] for label in doc["labels"]]
        rows = [[0.0 if label in str(i.get("text", "")) else -3.0 for label in labels] for i in inputs]
        return Scored(rows, 0.1, len(inputs), [0.01])

    def verify(self, name: str, inputs: list[dict[str, Any]]) -> list[dict[str, float]]:
        return [{"bad": 0.5, "good": 0.5} for _ in inputs]

    def apply(self, doc: dict[str, Any], name: str) -> None:
        self.applied.append(doc | {"name": name})

    def alias(self, alias: str, adapter: str) -> None: ...

    def drop_adapters(self, adapters: list[str]) -> None: ...


def test_the_served_candidate_is_refit_on_every_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptserve.fit.candidates import zero_shot
    from adaptserve.fit.run import Fit, FitConfig

    examples = [Example(f"{label} item {i}", label) for i in range(32) for label in ["good" if i % 2 else "bad"]]
    trained: dict[str, list[int]] = {}

    def train_lora(self: Fit, candidate: str, fold: int, fit_on: list[int]) -> tuple[str, dict[str, Any]]:
        name = f"adapter-{candidate}-{'all' if fold < 0 else fold}"  # fold −1: the refit
        trained[name] = list(fit_on)
        return name, {"adapter": name, "trained_on": len(fit_on), "training": {}}

    monkeypatch.setattr(Fit, "_train_lora", train_lora)
    config = FitConfig(tmp_path, zero_shot(["bad", "good"]), "text", candidates=("zero-shot", "lora-r8"))
    fit = Fit(examples, FitConfig(**(config.__dict__ | {"base_model": tmp_path})), _StubServer())  # type: ignore[arg-type]
    assert fit.run() == []
    assert trained and all(len(on) < 32 for on in trained.values())  # each fold's adapter: part of the data
    served = fit.serve("lora-r8", "goodbad")
    refit = [on for name, on in trained.items() if name.endswith("-all")]
    assert refit and sorted(refit[0]) == list(range(32))  # the served adapter saw every example
    assert served["refit_on"] == 32 and served["trained_on"] == 32
    assert fit.server.applied[-1]["model"] == "goodbad-lora"  # type: ignore[attr-defined]
    served = fit.serve("zero-shot", "goodbad")  # its scoring chosen on every example
    assert served["refit_on"] == 32 and served["chosen_on"] == 32


def test_near_duplicate_texts_stay_in_one_fold_and_labels_stay_balanced() -> None:
    from collections import defaultdict

    from adaptserve.fit.folds import normalise

    assert normalise("  Free   PRIZE!!! Call now.") == normalise("free prize, call now") == "free prize call now"
    texts, labels = [], []
    for i in range(160):
        label = "spam" if i % 4 == 0 else "ham"
        base = f"Message number {i}, about {label}"
        texts.append(base)
        labels.append(label)
        if i % 3 == 0:  # near-copies: case, spacing and punctuation differ
            texts += [base.upper() + "!!", "  " + base.replace(" ", "   ") + "."]
            labels += [label, label]
    folds = Folds.stratified(labels, seed=2, texts=texts)
    groups: dict[str, set[int]] = defaultdict(set)
    for i, text in enumerate(texts):
        groups[normalise(text)].add(i)
    assert max(len(g) for g in groups.values()) == 3
    assert sorted(i for f in range(len(folds)) for i in folds.test(f)) == list(range(len(texts)))
    spam_share = labels.count("spam") / len(labels)
    for f in range(len(folds)):
        test, train = set(folds.test(f)), set(folds.train(f))
        assert all(g <= test or g <= train for g in groups.values())  # no near-copy on both sides
        assert abs(sum(labels[i] == "spam" for i in test) / len(test) - spam_share) <= 0.03
        assert abs(len(test) - len(texts) / len(folds)) <= 3
    distinct = [f"text {i}" for i in range(len(labels))]  # no near-copies: the folds fit has always made
    assert Folds.stratified(labels, seed=2, texts=distinct) == Folds.stratified(labels, seed=2)


def test_a_lora_run_cut_by_the_budget_sets_the_steps_of_every_later_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first LoRA run is the one the budget cannot skip: where its deadline cuts it,
    the other folds and the served refit run as many steps, so what is served is what
    was measured."""
    from adaptserve.fit.candidates import zero_shot
    from adaptserve.fit.run import ALL, LORA, Fit, FitConfig

    examples = [Example(f"{label} item {i}", label) for i in range(32) for label in ["good" if i % 2 else "bad"]]
    given: list[tuple[int, int]] = []

    def train_lora(self: Fit, candidate: str, fold: int, fit_on: list[int]) -> tuple[str, dict[str, Any]]:
        steps = self._steps(candidate)
        given.append((fold, steps))
        cut = fold == 0  # the deadline ends fold 0's run after 5 steps
        name = f"adapter-{candidate}-{fold}"
        training = {"steps": 5 if cut else steps, "out_of_time": cut}
        return name, {"adapter": name, "trained_on": len(fit_on), "training": training}

    monkeypatch.setattr(Fit, "_train_lora", train_lora)
    config = FitConfig(tmp_path, zero_shot(["bad", "good"]), "text", candidates=("lora-r8",), budget_s=1e6)
    fit = Fit(examples, FitConfig(**(config.__dict__ | {"base_model": tmp_path})), _StubServer())  # type: ignore[arg-type]
    fit.run()
    fit.serve("lora-r8", "goodbad")
    assert given == [(0, LORA["lora-r8"][1]), (1, 5), (2, 5), (3, 5), (ALL, 5)]
