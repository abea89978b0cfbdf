"""Every method of the client, defined once. A method builds a `Call` and hands it to
`send`: the sync client's `send` returns the answer, the async client's returns an
awaitable of it, so `AsyncClient` has the same methods, to be awaited."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

from adaptserve_client.calls import Call
from adaptserve_client.errors import AdaptserveError, APIStatusError, from_fields
from adaptserve_client.types import Classification, Generation, Template, UsageRow

T = TypeVar("T")
Result = Union[T, Awaitable[T]]  # noqa: UP007 - a generic alias: T itself (Client) or awaitable (AsyncClient)
Send = Callable[[Call[Any]], Any]
Answer = Union[Classification, Generation]  # noqa: UP007
Item = Union[Classification, Generation, APIStatusError]  # noqa: UP007


def answer(data: dict[str, Any]) -> Answer:
    return Classification.from_json(data) if "label" in data else Generation.from_json(data)


def _item(data: dict[str, Any]) -> Item:
    """One result of a batch: an answer, or the error that input got (not raised)."""
    if "error" in data:
        error = data["error"]
        return from_fields(400 if error.get("type") == "invalid_request_error" else 502, error)
    return answer(data)


def _expect(kind: type[T], name: str) -> Callable[[Any], T]:
    def parse(data: dict[str, Any]) -> T:
        result = answer(data)
        if not isinstance(result, kind):
            raise AdaptserveError(f"template {name!r} is not a {kind.__name__.lower()} template")
        return result

    return parse


def _params(**values: Any) -> dict[str, str] | None:
    kept = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items() if v is not None}
    return kept or None


def _data(data: dict[str, Any]) -> Any:
    return data["data"]


class Namespace:
    def __init__(self, send: Send) -> None:
        self._send = send


class Templates(Namespace):
    """The caller's template endpoints: `/v1/templates`."""

    def list(self) -> Result[list[Template]]:
        return self._send(Call("GET", "/v1/templates", lambda d: [Template.from_json(t) for t in d["data"]]))

    def get(self, name: str) -> Result[Template]:
        return self._send(Call("GET", f"/v1/templates/{name}", Template.from_json))

    def run(self, name: str, inputs: dict[str, Any], **options: Any) -> Result[Answer]:
        """One input. Options: `version`, `explain`, and for generate `max_tokens`, `temperature`."""
        return self._send(self._call(name, inputs, options, answer))

    def run_batch(self, name: str, inputs: list[dict[str, Any]], **options: Any) -> Result[list[Item]]:
        """Up to the server's batch size; results in order, a failed input as its error."""
        return self._send(self._call(name, inputs, options, lambda d: [_item(r) for r in d["results"]]))

    def _call(self, name: str, inputs: Any, options: dict[str, Any], parse: Callable[[Any], Any]) -> Call[Any]:
        return Call("POST", f"/v1/templates/{name}", parse, json={"inputs": inputs, **options})


class Api(Namespace):
    """The tenant-side methods shared by `Client` and `AsyncClient`."""

    def __init__(self, send: Send) -> None:
        super().__init__(send)
        self.templates = Templates(send)
        self.admin = Admin(send)

    def classify(self, name: str, /, **inputs: Any) -> Result[Classification]:
        return self._send(self.templates._call(name, inputs, {}, _expect(Classification, name)))

    def generate(self, name: str, /, **inputs: Any) -> Result[Generation]:
        return self._send(self.templates._call(name, inputs, {}, _expect(Generation, name)))

    def usage(self, since: str | None = None) -> Result[list[UsageRow]]:
        """The caller's usage per model alias, template and hour (`since`: ISO time)."""
        parse = lambda d: [UsageRow.from_json(r) for r in d["data"]]  # noqa: E731
        return self._send(Call("GET", "/v1/usage", parse, params=_params(since=since)))

    def pii(self) -> Result[dict]:
        """The caller's PII mode: `{"mode": "off" | "log" | "mask" | "block"}`. The deny list and
        patterns are the admin's to read (`admin.tenants.pii(name)`): the names in them are personal data."""
        return self._send(Call("GET", "/v1/pii"))


class Tenants(Namespace):
    def create(self, name: str) -> Result[dict]:
        return self._send(Call("POST", "/admin/tenants", json={"name": name}))

    def list(self) -> Result[list[dict]]:
        return self._send(Call("GET", "/admin/tenants", _data))

    def delete(self, name: str) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/tenants/{name}"))

    def set_quotas(self, name: str, **limits: int | None) -> Result[dict]:
        """`requests_per_minute`, `tokens_per_minute`, `max_concurrent` (None: no limit)."""
        return self._send(Call("PUT", f"/admin/tenants/{name}/quotas", json=limits))

    def set_pii(
        self, name: str, mode: str, deny_list: Sequence[str] = (), patterns: Sequence[dict] = ()
    ) -> Result[dict]:
        """The tenant's PII policy: `mode` off, log, mask or block; `deny_list` words;
        `patterns` of `{"entity": "ORDER_ID", "regex": "...", "score": 0.9}`."""
        body = {"mode": mode, "deny_list": list(deny_list), "patterns": list(patterns)}
        return self._send(Call("PUT", f"/admin/tenants/{name}/pii", json=body))

    def pii(self, name: str) -> Result[dict]:
        return self._send(Call("GET", f"/admin/tenants/{name}/pii"))


class Keys(Namespace):
    def create(self, tenant: str, role: str = "api") -> Result[dict]:
        """The new key is in `["key"]`, shown this once. `role="admin"`: a tenant admin
        key (the tenant's part of the admin API), not an API key."""
        return self._send(Call("POST", f"/admin/tenants/{tenant}/keys", json={"role": role}))

    def list(self, tenant: str) -> Result[list[dict]]:
        return self._send(Call("GET", f"/admin/tenants/{tenant}/keys", _data))

    def delete(self, tenant: str, key_id: str) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/tenants/{tenant}/keys/{key_id}"))


class Adapters(Namespace):
    def push(self, folder: str | Path, name: str, *, base: str | None = None) -> Result[dict]:
        """Upload a PEFT LoRA folder (as .tar.gz); the server validates and stores it.
        `base`: the LLM base it was trained on, a generate model of the server's
        `models:` that takes adapters (default: the base model); a name is bound to the
        base of its first version."""
        files = {"file": (f"{name}.tar.gz", pack_folder(Path(folder)), "application/gzip")}
        data = {"name": name} | ({"base": base} if base is not None else {})
        return self._send(Call("POST", "/admin/adapters", data=data, files=files))

    def register_path(self, name: str, server_path: str, *, base: str | None = None) -> Result[dict]:
        """A folder the server can read itself (a shared volume): nothing is uploaded."""
        body = {"name": name, "path": server_path} | ({"base": base} if base is not None else {})
        return self._send(Call("POST", "/admin/adapters", json=body))

    def list(self) -> Result[list[dict]]:
        return self._send(Call("GET", "/admin/adapters", _data))

    def bases(self) -> Result[list[dict]]:
        """The LLM bases this key may push adapters for ({name, base_model}): the base
        model first, then the generate models of `models:` that take adapters and that
        its tenant may call (an operator key: all)."""
        return self._send(Call("GET", "/admin/adapter-bases", _data))

    def get(self, name: str) -> Result[dict]:
        return self._send(Call("GET", f"/admin/adapters/{name}"))

    def activate(self, name: str, version: str) -> Result[dict]:
        return self._send(Call("POST", f"/admin/adapters/{name}/activate", json={"version": version}))

    def delete(self, name: str) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/adapters/{name}"))

    def compress(
        self,
        name: str,
        *,
        rank: int | None = None,
        energy: float | None = None,
        version: str | None = None,
        into: str | None = None,
    ) -> Result[dict]:
        """A new version (of `name`, or of adapter `into`) reduced by SVD to `rank`, or to
        the rank keeping `energy` (0-1] of each module's update; not activated if the
        adapter has one. The answer has the version and its `fidelity`."""
        body = {"rank": rank, "energy": energy, "version": version, "name": into}
        return self._send(Call("POST", f"/admin/adapters/{name}/compress", json=_present(body)))

    def merge(
        self,
        name: str,
        sources: Sequence[str | tuple[str, float] | dict[str, Any]],
        *,
        method: str = "linear",
        rank: int | None = None,
        density: float | None = None,
        seed: int | None = None,
    ) -> Result[dict]:
        """Merge adapters into a new version of `name`. A source is "adapter",
        "adapter@version", (either, weight) or the API's {adapter, version, weight};
        method: cat (exact, rank = the sum), linear (best rank-`rank` approximation of
        the weighted sum), ties or dare (`density`: the share of entries each keeps)."""
        body = {"name": name, "sources": [_merge_source(s) for s in sources], "method": method}
        body |= _present({"rank": rank, "density": density, "seed": seed})
        return self._send(Call("POST", "/admin/adapters/merge", json=body))


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _merge_source(source: str | tuple[str, float] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    name, weight = (source, 1.0) if isinstance(source, str) else source
    adapter, _, version = name.partition("@")
    return _present({"adapter": adapter, "version": version or None, "weight": weight})


class Aliases(Namespace):
    """A tenant's model names: each points at the base or at an adapter (pinned or following)."""

    def set(
        self, tenant: str, alias: str, *, adapter: str | None = None, version: str | None = None, base: bool = False
    ) -> Result[dict]:
        body = {"base": True} if base else {"adapter": adapter, "version": version}
        return self._send(Call("PUT", f"/admin/tenants/{tenant}/models/{alias}", json=body))

    def list(self, tenant: str) -> Result[list[dict]]:
        return self._send(Call("GET", f"/admin/tenants/{tenant}/models", _data))

    def delete(self, tenant: str, alias: str) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/tenants/{tenant}/models/{alias}"))


class AdminTemplates(Namespace):
    def apply(
        self, name: str, document: str | bytes | dict, *, tenant: str | None = None, activate: bool = True
    ) -> Result[dict]:
        """A YAML/JSON document (text) or a dict → a new version, or the identical one."""
        content = json.dumps(document).encode() if isinstance(document, dict) else document
        content = content.encode() if isinstance(content, str) else content
        params = _params(tenant=tenant, activate=None if activate else False)
        return self._send(Call("PUT", f"/admin/templates/{name}", content=content, params=params))

    def list(self) -> Result[list[dict]]:
        return self._send(Call("GET", "/admin/templates", _data))

    def versions(self, name: str, tenant: str | None = None) -> Result[dict]:
        return self._send(Call("GET", f"/admin/templates/{name}", params=_params(tenant=tenant)))

    def activate(self, name: str, version: int, tenant: str | None = None) -> Result[dict]:
        body, params = {"version": version}, _params(tenant=tenant)
        return self._send(Call("POST", f"/admin/templates/{name}/activate", json=body, params=params))

    def delete(self, name: str, tenant: str | None = None) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/templates/{name}", params=_params(tenant=tenant)))


class Heads(Namespace):
    """Classifier heads: logistic regression over an embedding model's vectors, served
    by classify templates that name them (`head:`). `tenant`: whose (the operator's key;
    a tenant admin's are always its own); None: global."""

    def push(
        self, name: str, head: dict[str, Any], *, tenant: str | None = None, activate: bool = True
    ) -> Result[dict]:
        """`head`: {labels, embedding_model, dim, coef, intercept, temperature} → a new
        version (active unless `activate=False`; the first always), or the identical one."""
        params = _params(tenant=tenant, activate=None if activate else False)
        return self._send(Call("PUT", f"/admin/heads/{name}", json=head, params=params))

    def list(self) -> Result[list[dict]]:
        return self._send(Call("GET", "/admin/heads", _data))

    def get(self, name: str, tenant: str | None = None) -> Result[dict]:
        return self._send(Call("GET", f"/admin/heads/{name}", params=_params(tenant=tenant)))

    def activate(self, name: str, version: str, tenant: str | None = None) -> Result[dict]:
        body, params = {"version": version}, _params(tenant=tenant)
        return self._send(Call("POST", f"/admin/heads/{name}/activate", json=body, params=params))

    def rollback(self, name: str, tenant: str | None = None) -> Result[dict]:
        """Back to the version active before the last change."""
        return self._send(Call("POST", f"/admin/heads/{name}/rollback", params=_params(tenant=tenant)))

    def delete(self, name: str, tenant: str | None = None) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/heads/{name}", params=_params(tenant=tenant)))


class FitReports(Namespace):
    """What `adaptserve fit` runs found, as they pushed it: per candidate its accuracy with
    an interval, the decision, what was served, the plot. `tenant`: whose (the operator's
    key; a tenant admin's are always its own); None: global."""

    def push(self, name: str, report: dict[str, Any], *, tenant: str | None = None) -> Result[dict]:
        """`report`: {source, examples, decision, candidates, served, plot_png} → stored
        under `name`, replacing a report of that name."""
        return self._send(Call("PUT", f"/admin/fit-reports/{name}", json=report, params=_params(tenant=tenant)))

    def list(self) -> Result[list[dict]]:
        return self._send(Call("GET", "/admin/fit-reports", _data))

    def get(self, name: str, tenant: str | None = None) -> Result[dict]:
        return self._send(Call("GET", f"/admin/fit-reports/{name}", params=_params(tenant=tenant)))

    def delete(self, name: str, tenant: str | None = None) -> Result[None]:
        return self._send(Call("DELETE", f"/admin/fit-reports/{name}", params=_params(tenant=tenant)))


class Admin(Namespace):
    """The `/admin` API; the client's key must be an admin key."""

    def __init__(self, send: Send) -> None:
        super().__init__(send)
        self.tenants, self.keys, self.adapters = Tenants(send), Keys(send), Adapters(send)
        self.aliases, self.templates, self.heads = Aliases(send), AdminTemplates(send), Heads(send)
        self.fit_reports = FitReports(send)

    def usage(self, tenant: str | None = None, since: str | None = None) -> Result[list[UsageRow]]:
        parse = lambda d: [UsageRow.from_json(r) for r in d["data"]]  # noqa: E731
        return self._send(Call("GET", "/admin/usage", parse, params=_params(tenant=tenant, since=since)))

    def audit(
        self,
        tenant: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> Result[list[dict]]:
        """The audit trail, newest first (`action`: a prefix such as "DELETE")."""
        params = _params(tenant=tenant, actor=actor, action=action, since=since, limit=limit)
        return self._send(Call("GET", "/admin/audit", _data, params=params))


def pack_folder(folder: Path) -> bytes:
    """The folder's files (not sub-folders) as a .tar.gz, names relative to it."""
    if not folder.is_dir():
        raise AdaptserveError(f"{folder} is not a folder")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for file in sorted(folder.iterdir()):
            if file.is_file():
                tar.add(file, arcname=file.name)
    return buffer.getvalue()
