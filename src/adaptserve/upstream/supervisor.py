"""Runs `vllm serve` as a child process on loopback and keeps it running: the base
model's engine (`Supervisor`: LoRA, the engine plugin), each supervised `models:` entry
of role generate (`GenerateSupervisor`: the same command, less LoRA unless the entry
takes `adapters`) and each one's
encoder on the pooling runner (`PoolingSupervisor`).

The child gets its own process group (vLLM starts engine processes of its own), so
stopping kills the whole group; it also gets SIGTERM if the gateway dies without
cleaning up (PR_SET_PDEATHSIG), so no orphan keeps the port or the memory. Health
and readiness are the pool's job; this class only starts, restarts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

from adaptserve.config import ENV_PREFIX
from adaptserve.engine_plugin import ENABLE_ENV, PLUGIN, STATUS_ENV
from adaptserve.engine_settings import ModelEntry, VLLMSettings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_HEALTHY_RUN_S = 120.0  # a child that ran this long resets the back-off


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    describe = "vLLM"  # the start-up log line's name for it (tests find the LLM child's URL by it)

    def __init__(self, settings: VLLMSettings, model_path: Path, served_name: str, log_path: Path) -> None:
        self._settings = settings
        self._model_path = model_path
        self._served_name = served_name
        self.log_path = log_path
        self._plugin_status = log_path.parent / "engine-plugin"  # each engine process writes <this>.<pid>.json
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def command(self) -> list[str]:
        s = self._settings
        cmd = [
            sys.executable,
            "-m",
            "adaptserve.upstream.vllm_main",
            "serve",
            str(self._model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            self._served_name,
            "--dtype",
            s.dtype,
            "--max-model-len",
            str(s.max_model_len),
            *self._lora_args(),
            "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: prefix-cache hits
        ]
        if s.block_size is not None:
            cmd += ["--block-size", str(s.block_size)]
        return cmd + list(s.extra_args)

    def _lora_args(self) -> list[str]:
        s = self._settings
        cmd = ["--enable-lora", "--max-lora-rank", str(s.max_lora_rank), "--max-loras", str(s.max_loras)]
        if s.max_cpu_loras is not None:
            cmd += ["--max-cpu-loras", str(s.max_cpu_loras)]
        if s.lora_target_modules is not None:
            cmd += ["--lora-target-modules", *s.lora_target_modules]
        return cmd

    def environment(self) -> dict[str, str]:
        """What the engine's processes get: not the gateway's settings (`_without_settings`)."""
        env = _without_settings()
        if self._lora_args():
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # safe: only the gateway reaches it
        env.pop("VLLM_LORA_RESOLVER_CACHE_DIR", None)  # the gateway alone decides what loads
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._settings.kv_cache_gib))
        if self._settings.disable_dynamo:
            env["TORCHDYNAMO_DISABLE"] = "1"
        if self._settings.engine_plugin:  # the only adaptserve variables the child gets
            env[ENABLE_ENV], env[STATUS_ENV] = PLUGIN, str(self._plugin_status)
        return env

    def plugin_active(self) -> bool:
        """Whether every engine process reported the grouped LoRA ops active (so a request
        without an adapter gets none). Read once the engine is up: each process decides
        while it starts, before vLLM reports healthy."""
        statuses = []
        for path in self._plugin_files():
            if path.name.endswith(".json"):
                with contextlib.suppress(OSError, ValueError):
                    statuses.append(json.loads(path.read_text()))
        return bool(statuses) and all(s.get("active") is True for s in statuses)

    def _clear_plugin_status(self) -> None:
        for path in self._plugin_files():
            path.unlink(missing_ok=True)

    def _plugin_files(self) -> list[Path]:
        """This engine's status files (`<status>.<pid>.json`, and its `.tmp` while one is
        written), never another's: a model name may hold dots, so `engine-plugin-llm.*`
        also matches entry `llm.2`'s files, which the pid check tells apart."""
        own = re.compile(re.escape(self._plugin_status.name) + r"\.\d+\.json(\.tmp)?")
        return [p for p in self._plugin_status.parent.glob(self._plugin_status.name + ".*") if own.fullmatch(p.name)]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s on %s; its log is %s", self.describe, self.url, self.log_path)
        self._task = asyncio.create_task(self._keep_running(), name="vllm supervisor")

    async def _keep_running(self) -> None:
        backoff = self._settings.restart_backoff_s
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            if time.monotonic() - started > _HEALTHY_RUN_S:
                backoff = self._settings.restart_backoff_s
            self.restarts += 1
            log.error(
                "%s exited with code %s; restarting in %.0fs (see %s)", self.describe, code, backoff, self.log_path
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.restart_backoff_max_s)

    async def _run_once(self) -> int:
        self._clear_plugin_status()  # a new engine decides anew
        with open(self.log_path, "ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        code = await self.process.wait()
        # vLLM's engine processes can outlive a crashed API server: clear the group
        # before starting again, or they keep the memory (and maybe the port).
        self._signal_group(self.process.pid, signal.SIGKILL)
        return code

    async def stop(self, grace_s: float = 20.0) -> None:
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                log.warning("vLLM did not stop in %.0fs; killing it", grace_s)
            # Engine processes may outlive the API server: take down the whole group.
            self._signal_group(process.pid, signal.SIGKILL)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


class GenerateSupervisor(Supervisor):
    """A `models:` entry of role generate: the base model's command and environment
    (`vllm` settings: block size, dynamo, ...) with the entry's dtype, context, KV cache
    and flags; its threads on the entry's `cpus`. Without `adapters`, less LoRA (no
    `--enable-lora`, no runtime adapter loading, no engine plugin: its grouped LoRA ops
    have nothing to do); with them, the base model's LoRA flags and engine plugin, whose
    status files are its own (`engine-plugin-NAME.<pid>.json`)."""

    def __init__(self, settings: VLLMSettings, entry: ModelEntry, model_path: Path, log_path: Path) -> None:
        own = {
            "dtype": entry.engine_dtype(settings),
            "max_model_len": entry.context(settings),
            "extra_args": entry.extra_args,
            "engine_plugin": settings.engine_plugin and entry.adapters,
        }
        super().__init__(settings.model_copy(update=own), model_path, entry.engine_name, log_path)
        self._cpus, self._kv_cache_gib, self._lora = entry.cpus, entry.kv_cache_gib, entry.adapters
        self._plugin_status = log_path.parent / f"engine-plugin-{entry.name}"
        self.describe = f"vLLM for model {entry.name} (generate)"

    def _lora_args(self) -> list[str]:
        return super()._lora_args() if self._lora else []

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self._kv_cache_gib)  # its own, not the base model's (environment)
        if self._cpus is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self._cpus
        return env

    def plugin_active(self) -> bool:
        return self._lora and super().plugin_active()  # without adapters it never loads the plugin


class PoolingSupervisor(Supervisor):
    """A `models:` entry's encoder: `vllm serve PATH --runner pooling --enforce-eager`,
    without the LoRA flags, runtime adapter loading or the engine plugin. Eager, because
    with TORCHDYNAMO_DISABLE=1 (kept: the CPU build compiles for minutes otherwise) a
    compiled pooling worker fails at warm-up (`aot_compile is not supported`)."""

    def __init__(self, settings: VLLMSettings, entry: ModelEntry, model_path: Path, log_path: Path) -> None:
        super().__init__(settings, model_path, entry.engine_name, log_path)
        self._entry = entry
        self.describe = f"vLLM for model {entry.name} ({entry.role})"

    def command(self) -> list[str]:
        e = self._entry
        cmd = [
            *(sys.executable, "-m", "adaptserve.upstream.vllm_main", "serve", str(self._model_path)),
            *("--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", self._served_name),
            *("--runner", "pooling", "--enforce-eager", "--dtype", e.engine_dtype(self._settings)),
        ]
        context = e.context(self._settings)
        if context is not None:
            cmd += ["--max-model-len", str(context)]
        return cmd + list(e.extra_args)

    def environment(self) -> dict[str, str]:
        """Its threads on its own CPUs: vLLM's `auto` binding would put them on the
        generate engine's, and each engine's OpenMP threads then stall the other's."""
        env = _without_settings()
        env.pop("VLLM_LORA_RESOLVER_CACHE_DIR", None)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self._entry.kv_cache_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = self._entry.cpus or str(max(os.sched_getaffinity(0)))
        env["TORCHDYNAMO_DISABLE"] = "1"
        return env

    def plugin_active(self) -> bool:
        return False  # it never loads the plugin

    def _clear_plugin_status(self) -> None:
        pass  # the status files beside its log are the generate engine's


def _without_settings() -> dict[str, str]:
    """The gateway's environment without its own settings: the admin and API keys and
    the database URL (with its password) never reach an engine's processes."""
    # Settings are read case-insensitively: so is the filter.
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
