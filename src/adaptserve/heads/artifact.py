"""A classifier head: multinomial logistic regression over one embedding model's vectors.

`coef` (labels x dim), `intercept` (labels), the label names in order, the `models:`
entry it was trained on (`embedding_model`) and the SHA-256 of that model's weight files
(`embedding_digest`: the server stamps its own when the upload gives none, and refuses a
head whose digest is not its model's), `dim` and a `temperature` (calibration:
the logits are divided by it; 1 leaves them). Applied with numpy only:
softmax((x @ coef.T + intercept) / temperature), which is scikit-learn's
`LogisticRegression.predict_proba` for a multinomial model. A binary model as
scikit-learn stores it (one row w, one intercept b: p1 = sigmoid(x @ w + b)) is
accepted and kept as two rows [0, w] and [0, b], whose softmax is that sigmoid.

On disk (a folder of the content-addressed store): `head.json` (the format, labels,
embedding model, dim, temperature) and `coef.npy`, `intercept.npy` (float64, read with
`allow_pickle=False`). The upload is one JSON object with the same fields, weights as
nested lists; anything malformed is a 400 naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from adaptserve.errors import InvalidRequestError, invalid_from

FORMAT = 1
MAX_LABELS = 1000
MAX_DIM = 16384
MAX_WEIGHTS = 4_000_000  # labels x dim: 32 MB of float64 at most (an upload's body limit comes first)
META, COEF, INTERCEPT = "head.json", "coef.npy", "intercept.npy"

Matrix = NDArray[np.float64]


class HeadInvalidError(InvalidRequestError):
    code = "invalid_head"


class HeadUpload(BaseModel):
    """The JSON a head is uploaded as (and what `HeadArtifact.document` gives back)."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    labels: list[StrictStr] = Field(min_length=2, max_length=MAX_LABELS)
    embedding_model: StrictStr = Field(min_length=1, max_length=64)
    embedding_digest: StrictStr | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    dim: int = Field(ge=1, le=MAX_DIM)
    coef: list[list[float]] = Field(min_length=1, max_length=MAX_LABELS)
    intercept: list[float] = Field(min_length=1, max_length=MAX_LABELS)
    temperature: float = Field(1.0, gt=0.01, le=100)


@dataclass(frozen=True)
class HeadArtifact:
    labels: tuple[str, ...]
    embedding_model: str
    dim: int
    coef: Matrix  # (labels, dim)
    intercept: Matrix  # (labels,)
    temperature: float = 1.0
    embedding_digest: str | None = None  # SHA-256 of the embedding model's weight files

    @classmethod
    def parse(cls, body: object) -> HeadArtifact:
        """An uploaded JSON object → a checked head, or a 400 naming the first bad field."""
        if isinstance(body, dict) and body.get("format", FORMAT) != FORMAT:
            known = f"format {body.get('format')!r} is not known; this server reads {FORMAT}"
            raise HeadInvalidError(known, param="format")
        try:
            upload = HeadUpload.model_validate(body)
        except ValidationError as exc:
            error = invalid_from(exc, prefix="invalid head: ")
            raise HeadInvalidError(error.message, param=error.param) from exc
        if len({len(row) for row in upload.coef}) != 1:
            raise HeadInvalidError("coef's rows must all hold dim numbers", param="coef")
        coef = np.asarray(upload.coef, dtype=np.float64)
        intercept = np.asarray(upload.intercept, dtype=np.float64)
        head = cls.build(upload.labels, upload.embedding_model, upload.dim, coef, intercept, upload.temperature)
        return head.stamped(upload.embedding_digest)

    @classmethod
    def build(
        cls, labels: list[str], model: str, dim: int, coef: Matrix, intercept: Matrix, temperature: float = 1.0
    ) -> HeadArtifact:
        """Checked weights (a binary model's single row expanded to two) → a head."""
        _check_labels(labels)
        if coef.size > MAX_WEIGHTS:
            raise HeadInvalidError(f"a head holds at most {MAX_WEIGHTS} weights", param="coef")
        if coef.ndim != 2 or coef.shape[1] != dim:
            raise HeadInvalidError(f"coef must be {len(labels)} rows of dim ({dim}) numbers", param="coef")
        if coef.shape[0] == 1 and len(labels) == 2 and intercept.shape == (1,):
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros(1), intercept])
        if coef.shape[0] != len(labels):
            raise HeadInvalidError(
                f"coef has {coef.shape[0]} rows for {len(labels)} labels (one per label, or one for two labels)",
                param="coef",
            )
        if intercept.shape != (len(labels),):
            raise HeadInvalidError(f"intercept must hold {len(labels)} numbers, one per label", param="intercept")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise HeadInvalidError("coef and intercept must be finite numbers", param="coef")
        if not 0.01 < temperature <= 100:
            raise HeadInvalidError("temperature must be in (0.01, 100]", param="temperature")
        return cls(tuple(labels), model, dim, coef.astype(np.float64), intercept.astype(np.float64), float(temperature))

    def stamped(self, digest: str | None) -> HeadArtifact:
        """The same head, recording `digest` as its embedding model's weights."""
        return dataclasses.replace(self, embedding_digest=digest)

    def probabilities(self, vectors: Matrix) -> Matrix:
        """Each row's label probabilities, in `labels` order."""
        logits = (vectors @ self.coef.T + self.intercept) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        out: Matrix = exp / exp.sum(axis=1, keepdims=True)
        return out

    def logits(self, vectors: Matrix) -> Matrix:
        out: Matrix = vectors @ self.coef.T + self.intercept
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "labels": list(self.labels),
            "embedding_model": self.embedding_model,
            **({"embedding_digest": self.embedding_digest} if self.embedding_digest else {}),
            "dim": self.dim,
            "temperature": self.temperature,
        }

    def document(self) -> dict[str, Any]:
        """The upload's JSON: what the client and the trainer send."""
        return self.metadata() | {"coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).write_text(json.dumps(self.metadata(), sort_keys=True, separators=(",", ":")))
        np.save(folder / COEF, self.coef, allow_pickle=False)
        np.save(folder / INTERCEPT, self.intercept, allow_pickle=False)

    @classmethod
    def read(cls, folder: Path) -> HeadArtifact:
        """A stored head (written by `write`), checked again."""
        meta = json.loads((folder / META).read_text())
        coef = np.load(folder / COEF, allow_pickle=False)
        intercept = np.load(folder / INTERCEPT, allow_pickle=False)
        head = cls.build(meta["labels"], meta["embedding_model"], meta["dim"], coef, intercept, meta["temperature"])
        return head.stamped(meta.get("embedding_digest"))


def _check_labels(labels: list[str]) -> None:
    if len(labels) < 2:
        raise HeadInvalidError("a head needs at least two labels", param="labels")
    if any(not label or len(label) > 64 for label in labels):
        raise HeadInvalidError("a label is 1 to 64 characters", param="labels")
    if len(set(labels)) != len(labels):
        raise HeadInvalidError("labels must be distinct", param="labels")
