"""Finding personal data in text: Presidio's pattern recognizers behind its no-model NLP
engine (`NoOpNlpEngine`), plus a tenant's deny list and patterns.

Detected: email addresses, phone numbers, credit-card numbers (Luhn-checked), IBANs
(checksummed), IP addresses, US social-security numbers, crypto wallets. Not
detected: names and places (PERSON, LOCATION): they need a spaCy model, and none can
be installed here; a tenant lists the names it knows in its deny list. Left out on
purpose: Presidio's US driver-licence recognizer (it matches most short alphanumeric
words), and its URL and date recognizers (rarely a person's, often what the prompt is
about). Presidio's score thresholds are kept (`threshold`, 0.4: its phone numbers
score exactly that without context words).

Look-alikes: a phone-number or IP-address shape right after a word like "order",
"invoice", "version" or "build" is the business's identifier, not a person's, and is
dropped (a card or an SSN is kept wherever it is); so is a "phone
number" of more than 15 digits (no phone number has more: a card failing Luhn).

Presidio is imported when first needed (a few seconds, once per process, in a worker
thread): a request of a `mask` or `block` tenant, or an engine error to scrub. The email recognizer's
domain check (tldextract) uses the suffix list bundled with tldextract and never the
network."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptserve.pii.policy import PiiPolicy

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer

ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "CRYPTO")
DENIED = "DENY_LIST"  # the entity of a tenant's deny-list words
# An identifier's label right before a number: the number is not a person's.
LOOK_ALIKE = re.compile(
    r"(?:\b(?:order|invoice|ticket|tracking|ref|reference|case|sku|part|serial|version|build|release|model|po|id)"
    r"\s*(?:no\.?|number|nr\.?|#|:)?\s*[#:]?\s*|\bv)$",
    re.IGNORECASE,
)
LOOK_ALIKE_ENTITIES = frozenset({"PHONE_NUMBER", "IP_ADDRESS"})  # a card or SSN after "id:" is still one


@dataclass(frozen=True)
class Finding:
    entity: str
    start: int
    end: int
    score: float


class Detector:
    """One per gateway (and per tool that stores text); safe to call from threads."""

    def __init__(self, threshold: float = 0.4) -> None:
        self.threshold = threshold
        self._lock = threading.Lock()
        self._analyzer: AnalyzerEngine | None = None
        self._tenant_recognizers: dict[PiiPolicy, list[EntityRecognizer]] = {}

    def find(self, text: str, policy: PiiPolicy) -> list[Finding]:
        """What `text` holds, in order, without overlaps (the surer, then the longer wins)."""
        if not text:
            return []
        analyzer = self._engine()
        results = analyzer.analyze(
            text,
            language="en",
            score_threshold=self.threshold,
            ad_hoc_recognizers=self._recognizers(policy),
            allow_list=None,
        )
        found = [Finding(r.entity_type, r.start, r.end, r.score) for r in results]
        found = [f for f in found if not _looks_alike(text, f)]
        return _without_overlaps(found)

    def _engine(self) -> AnalyzerEngine:
        with self._lock:
            if self._analyzer is None:
                self._analyzer = _build_analyzer()
            return self._analyzer

    def _recognizers(self, policy: PiiPolicy) -> list[EntityRecognizer]:
        with self._lock:
            if policy not in self._tenant_recognizers:
                if len(self._tenant_recognizers) > 1024:
                    self._tenant_recognizers.clear()
                self._tenant_recognizers[policy] = _tenant_recognizers(policy)
            return self._tenant_recognizers[policy]


def _build_analyzer() -> AnalyzerEngine:
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled snapshot only

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline(pattern_text).fqdn != ""

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        CryptoRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


def _tenant_recognizers(policy: PiiPolicy) -> list[Any]:
    from presidio_analyzer import Pattern, PatternRecognizer

    out: list[Any] = []
    if policy.deny_list:
        out.append(PatternRecognizer(supported_entity=DENIED, deny_list=list(policy.deny_list)))
    for p in policy.patterns:
        out.append(PatternRecognizer(supported_entity=p.entity, patterns=[Pattern(p.entity, p.regex, p.score)]))
    return out


def _looks_alike(text: str, found: Finding) -> bool:
    if found.entity not in LOOK_ALIKE_ENTITIES:
        return False
    if found.entity == "PHONE_NUMBER" and sum(c.isdigit() for c in text[found.start : found.end]) > 15:
        return True  # longer than any phone number (E.164): a card failing Luhn, an account number
    before = text[max(0, found.start - 24) : found.start]
    return LOOK_ALIKE.search(before) is not None


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
