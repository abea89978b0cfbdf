"""Scenario 3's baseline: a fine-tuned model served the way most tutorials do it — one
process, `transformers` + `peft`, every adapter loaded into one `PeftModel` and chosen
per request with `set_adapter`. Written to be fair to it: requests waiting for the same
adapter are batched into one greedy `generate` (left-padded), and each answer is
exactly `max_tokens` long, as the engine's are in the benchmark.

    python -m adaptserve.bench.peft_server --model DIR --adapter NAME=DIR ... --port P
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from transformers import AutoModelForCausalLM, AutoTokenizer

BASE = "base"


@dataclass
class Job:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    done: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """One worker thread: take the oldest job, batch every waiting job of its adapter."""

    def __init__(self, model_dir: Path, adapters: dict[str, Path], max_batch: int, dtype: torch.dtype) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        if adapters:
            from peft import PeftModel

            first, *rest = adapters.items()
            model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
            for name, path in rest:
                model.load_adapter(path, adapter_name=name)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.adapters, self.max_batch = model.to(self.device), set(adapters), max_batch
        self.jobs: list[Job] = []
        self.ready = threading.Condition()
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, job: Job) -> None:
        with self.ready:
            self.jobs.append(job)
            self.ready.notify()

    def _work(self) -> None:
        while True:
            with self.ready:
                while not self.jobs:
                    self.ready.wait()
                model = self.jobs[0].model
                batch = [j for j in self.jobs if j.model == model][: self.max_batch]
                self.jobs = [j for j in self.jobs if j not in batch]
            try:
                results: list[Any] = self._generate(model, batch)
            except Exception as exc:  # the error goes back to each waiting request
                results = [exc] * len(batch)
            for job, result in zip(batch, results, strict=True):
                job.loop.call_soon_threadsafe(_settle, job.done, result)

    @torch.inference_mode()
    def _generate(self, model: str, batch: list[Job]) -> list[dict[str, Any]]:
        template = self.tokenizer.apply_chat_template
        texts = [template(j.messages, tokenize=False, add_generation_prompt=True) for j in batch]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        new = max(j.max_tokens for j in batch)
        kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False}
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        if model == BASE and self.adapters:
            with self.model.disable_adapter():
                out = self.model.generate(**encoded, **kwargs)
        else:
            if self.adapters:
                self.model.set_adapter(model)
            out = self.model.generate(**encoded, **kwargs)
        prompt_len = encoded["input_ids"].shape[1]
        answers = []
        for row, job, mask in zip(out, batch, encoded["attention_mask"], strict=True):
            tokens = row[prompt_len : prompt_len + job.max_tokens]
            answers.append(
                {
                    "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                    "usage": {"prompt_tokens": int(mask.sum()), "completion_tokens": len(tokens)},
                }
            )
        return answers


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def create_app(batcher: Batcher) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        model = body.get("model", BASE)
        if model != BASE and model not in batcher.adapters:
            return JSONResponse({"error": {"message": f"unknown model {model}", "type": "invalid_request_error"}}, 404)
        loop = asyncio.get_running_loop()
        job = Job(model, body["messages"], int(body.get("max_tokens") or 16), loop.create_future(), loop)
        batcher.submit(job)
        answer = await job.done
        return JSONResponse(
            {
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer["text"]}}],
                "usage": answer["usage"],
            }
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--dtype", help="default: bfloat16 on a GPU, float32 on a CPU (faster without bf16 units)")
    args = parser.parse_args()
    adapters = {name: Path(path) for name, path in (a.split("=", 1) for a in args.adapter)}
    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    batcher = Batcher(args.model, adapters, args.max_batch, getattr(torch, dtype))
    uvicorn.run(create_app(batcher), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
