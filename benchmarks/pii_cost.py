"""Personal-data masking: what it costs and how well it finds.

1. Detection on a labelled set built here (seeded): emails, phone numbers (US, UK,
   German, French formats), credit cards with a valid Luhn digit, IBANs with a valid
   checksum, IPv4/IPv6 addresses, in sentences; and look-alikes that must be left alone
   (cards failing Luhn, IBANs with a wrong checksum, order and invoice numbers,
   dates, times, versions, prices, postcodes). Precision and recall per entity type,
   a found value counting only when it is exactly the labelled one. The set is written
   next to the results.
2. The gateway's latency per request with the tenant's mode `off` and `mask`, side by
   side in one run, in front of the instant fake vLLM (so the difference is the
   gateway's own): a typical chat message and a generate-template input, p50 and p99.

    .venv/bin/python benchmarks/pii_cost.py --requests 300 --out benchmarks/results/pii
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn
from gateway_cost import Background  # benchmarks/ is the script's folder
from served import MODELS_DIR

from adaptserve.bench.fake_engine import BASE, FakeState, create_fake_vllm
from adaptserve.config import Settings
from adaptserve.default_model import DEFAULT_MODEL_NAME
from adaptserve.evaluation import percentile
from adaptserve.pii.detector import Detector
from adaptserve.pii.policy import DEFAULT_POLICY
from adaptserve.server import listen
from adaptserve.server.app import create_app
from adaptserve.upstream.supervisor import free_port

IBANS = [
    "DE89 3704 0044 0532 0130 00",
    "GB82 WEST 1234 5698 7654 32",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91ABNA0417164300",
    "ES9121000418450200051332",
]
PHONES = [
    "+1 415-555-0132",
    "(212) 555-1234",
    "020 7946 0958",
    "+44 20 7946 0958",
    "+49 30 901820",
    "030 901820",
    "+33 1 42 68 53 00",
    "212-555-0187",
]
NAMES = ["kim.lee", "j.doe", "ana_maria", "sam+news", "t.nguyen", "olu.ade"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "uni.example.edu"]
SENTENCES = [
    "Please reach me at {v} about the refund.",
    "My contact is {v}, thanks.",
    "Send the invoice to {v} before Friday.",
    "Update the record: {v}.",
    "Is {v} the right one to use?",
]
LOOK_ALIKES = [
    "Your order #{n3}-{n3}-{n4} has shipped.",
    "Invoice no. {n3} {n3} {n4} is due on 2024-05-01.",
    "Upgrade to version {d}.{d}.{d}.{d} before the release.",
    "Build 2023.10.12.{d} fixed it; v{d}.{d}.{d} is next.",
    "The meeting moved to {dd}/{mm}/2025 at 10:{mm}.",
    "It costs $1,{n3}.99 or 1{n3},50 EUR.",
    "Tracking number {n4}{n4}{n4} is in transit.",
    "Ship to postcode {n5}, ticket {n3}-{n4}.",
]


def luhn_digit(digits: str) -> int:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10


def card(rng: random.Random, valid: bool) -> str:
    body = rng.choice(["4", "51", "37", "6011"]) + "".join(rng.choice("0123456789") for _ in range(20))
    body = body[: (14 if body.startswith("37") else 15)]
    last = luhn_digit(body)
    number = body + str(last if valid else (last + rng.randint(1, 9)) % 10)
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def labelled_set(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    values = (
        [("EMAIL_ADDRESS", f"{n}@{d}") for n in NAMES for d in DOMAINS[:3]]
        + [("PHONE_NUMBER", p) for p in PHONES for _ in range(2)]
        + [("CREDIT_CARD", card(rng, True)) for _ in range(16)]
        + [("IBAN_CODE", i) for i in IBANS for _ in range(3)]
        + [
            ("IP_ADDRESS", f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}")
            for _ in range(10)
        ]
        + [("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"), ("IP_ADDRESS", "fe80::1ff:fe23:4567:890a")]
    )
    rows = [{"text": rng.choice(SENTENCES).format(v=v), "entities": [{"type": t, "value": v}]} for t, v in values]
    wrong_iban = [i[:-1] + str((int(i[-1]) + 1) % 10) for i in IBANS]
    rows += [{"text": f"The card {card(rng, False)} was declined.", "entities": []} for _ in range(12)]
    rows += [{"text": f"Check IBAN {i} again.", "entities": []} for i in wrong_iban]
    for _ in range(4):
        for shape in LOOK_ALIKES:
            text = shape.format(
                n3=rng.randint(100, 999),
                n4=rng.randint(1000, 9999),
                n5=rng.randint(10000, 99999),
                d=rng.randint(1, 19),
                dd=rng.randint(10, 28),
                mm=rng.randint(10, 12),
            )
            rows.append({"text": text, "entities": []})
    rng.shuffle(rows)
    return rows


def detection(rows: list[dict]) -> dict:
    detector = Detector()
    counts: dict[str, dict[str, int]] = {}
    misses, false_alarms = [], []
    for row in rows:
        text = row["text"]
        truth = {(e["type"], e["value"]) for e in row["entities"]}
        got = {(f.entity, text[f.start : f.end]) for f in detector.find(text, DEFAULT_POLICY)}
        for entity in {t for t, _ in truth | got}:
            c = counts.setdefault(entity, {"tp": 0, "fp": 0, "fn": 0})
            c["tp"] += len({x for x in truth & got if x[0] == entity})
            c["fp"] += len({x for x in got - truth if x[0] == entity})
            c["fn"] += len({x for x in truth - got if x[0] == entity})
        misses += [f"{t}: {v}" for t, v in truth - got]
        false_alarms += [f"{t}: {v} (in {text!r})" for t, v in got - truth]
    table = {
        e: {
            "precision": c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0,
            "recall": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0,
            **c,
        }
        for e, c in sorted(counts.items())
    }
    look_alikes = [r for r in rows if not r["entities"]]
    clean = sum(not detector.find(r["text"], DEFAULT_POLICY) for r in look_alikes)
    return {
        "per_entity": table,
        "look_alikes": len(look_alikes),
        "look_alikes_left_alone": clean,
        "misses": misses,
        "false_alarms": false_alarms,
    }


CHAT = (  # 36 words: the fake engine's context is 64 words, the template's instruction included
    "Hi, my blue jacket has not arrived. Could you check what happened and send the tracking link "
    "to kim.lee@example.com? Or call me on +1 415-555-0132 after five. Thanks a lot for your help."
)
TEMPLATE = {
    "name": "contact",
    "kind": "generate",
    "instruction": "Extract the contact details from the message as JSON.",
    "inputs": {"message": {"type": "string", "max_length": 2000}},
    "schema": {"type": "object", "properties": {"email": {"type": "string"}}},
}


def latency(url: str, key: str, n: int) -> dict[str, list[float]]:
    chat = {"model": "default", "messages": [{"role": "user", "content": CHAT}], "max_tokens": 16}
    template = {"inputs": {"message": CHAT}}
    out: dict[str, list[float]] = {"chat": [], "template": []}
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(n):
            for kind, path, body in (
                ("chat", "/v1/chat/completions", chat),
                ("template", "/v1/templates/contact", template),
            ):
                started = time.perf_counter()
                client.post(url + path, json=body).raise_for_status()
                out[kind].append(time.perf_counter() - started)
    return out


def gateway_latency(n: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="adaptserve-pii-"))
    fake_state = FakeState(json_reply={"email": "<EMAIL_ADDRESS_1>"})
    fake = Background(uvicorn.Config(create_fake_vllm(fake_state), port=free_port(), log_level="warning"), "/health")
    settings = Settings(
        api_key="sk-pii",
        admin_key="sk-pii-admin",
        data_dir=root,
        model=str(MODELS_DIR / DEFAULT_MODEL_NAME),
        served_model_name=BASE,
        upstreams=[fake.url],
        log_level="warning",
        port=free_port(),
    )
    (config,) = listen.configs(create_app(settings), settings)
    gateway = Background(config, "/ready")
    admin = httpx.Client(base_url=gateway.url + "/admin", headers={"Authorization": "Bearer sk-pii-admin"})
    try:
        admin.put("/templates/contact", content=json.dumps(TEMPLATE)).raise_for_status()
        keys = {}
        for mode in ("off", "mask"):
            admin.post("/tenants", json={"name": mode}).raise_for_status()
            admin.put(f"/tenants/{mode}/models/default", json={"base": True}).raise_for_status()
            admin.put(f"/tenants/{mode}/pii", json={"mode": mode}).raise_for_status()
            keys[mode] = admin.post(f"/tenants/{mode}/keys").json()["key"]
        for mode in keys:
            latency(gateway.url, keys[mode], 20)  # warm-up (the detector loads on first use)
        runs = {mode: {"chat": [], "template": []} for mode in keys}
        for _ in range(5):  # interleaved, so drift hits both modes alike
            for mode, key in keys.items():
                for kind, values in latency(gateway.url, key, n // 5).items():
                    runs[mode][kind] += values
    finally:
        admin.close()
        gateway.stop()
        fake.stop()
    return {
        kind: {
            mode: {"p50": 1000 * percentile(runs[mode][kind], 50), "p99": 1000 * percentile(runs[mode][kind], 99)}
            for mode in runs
        }
        for kind in ("chat", "template")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pii"))
    args = parser.parse_args()
    rows = labelled_set()
    quality = detection(rows)
    timing = gateway_latency(args.requests)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "pii.json").write_text(json.dumps({"detection": quality, "latency_ms": timing}, indent=1))
    lines = [
        "# Personal-data masking\n",
        f"`.venv/bin/python benchmarks/pii_cost.py --requests {args.requests}`.\n",
        f"Detection on the labelled set (`labelled.jsonl`, {len(rows)} texts, seeded):\n",
        "| entity | precision | recall | found | wrong | missed |",
        "|---|---|---|---|---|---|",
        *(
            f"| {e} | {c['precision']:.3f} | {c['recall']:.3f} | {c['tp']} | {c['fp']} | {c['fn']} |"
            for e, c in quality["per_entity"].items()
        ),
        f"\nLook-alikes left alone: {quality['look_alikes_left_alone']} of {quality['look_alikes']}.\n",
        f"The gateway's latency per request in front of the instant fake vLLM, {args.requests} requests per "
        "mode and kind, interleaved (a 36-word chat message with an email and a phone number; the same text "
        "as a generate template's input):\n",
        "| request | off p50 (ms) | mask p50 (ms) | added p50 | off p99 (ms) | mask p99 (ms) | added p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, modes in timing.items():
        off, mask = modes["off"], modes["mask"]
        lines.append(
            f"| {kind} | {off['p50']:.1f} | {mask['p50']:.1f} | +{mask['p50'] - off['p50']:.1f} ms "
            f"(×{mask['p50'] / off['p50']:.2f}) | {off['p99']:.1f} | {mask['p99']:.1f} | "
            f"+{mask['p99'] - off['p99']:.1f} ms |"
        )
    (args.out / "pii.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
