"""TensorFlow's load-time native log lines, held to `TF_CPP_MIN_LOG_LEVEL` like the rest of it.

TensorFlow's shared libraries log while they are being loaded, from C++ static initialisers,
before its own logging has read `TF_CPP_MIN_LOG_LEVEL`: absl then writes every line to stderr,
after a notice saying so. Which lines appear depends on the CPU: where oneDNN is on by default
(AVX-512, AMX), port.cc says "oneDNN custom operations are on" twice. The setting is ignored
for exactly those lines, so the step's log would change with the machine it runs on.

`quiet_tensorflow_load()` applies the setting to them: the first `import tensorflow` of the
process (directly, or through Keras) runs with file descriptor 2 on a pipe, and a thread passes
every line on unchanged except absl-formatted lines below the level and absl's notice. oneDNN
itself stays as TensorFlow chose; only the announcement is held back.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

ABSL_PREINIT_NOTICE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
)
# absl's (glog's) prefix: severity, MMDD, the time (before absl is initialised it has no time
# zone and prints seconds since the epoch: "I0000 00:00:1796689647.581838"), thread, file:line]
NATIVE_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]\s]+:\d+\] ")
SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def min_log_level() -> int:
    """TensorFlow's reading of TF_CPP_MIN_LOG_LEVEL: 0 (everything) unless a number 0..3."""
    raw = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    return int(raw) if raw in ("0", "1", "2", "3") else 0


def keep(line: bytes, level: int) -> bool:
    """Whether a stderr line passes at this level: anything not absl-formatted always does."""
    if level == 0:
        return True
    if line.rstrip(b"\r\n") == ABSL_PREINIT_NOTICE:
        return False
    native = NATIVE_LINE.match(line)
    return native is None or SEVERITY[native.group(1)] >= level


def _forward(source: int, target: int, level: int) -> None:
    with os.fdopen(source, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if keep(line, level))
            if kept:
                os.write(target, kept)
        if pending and keep(pending, level):
            os.write(target, pending)


@contextlib.contextmanager
def filtered_stderr(level: int) -> Iterator[None]:
    """File descriptor 2 through the filter while the block runs (native writes included)."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, original, level), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder drains and ends
        forwarder.join()
        os.close(original)


class _FilteredLoader(importlib.abc.Loader):
    """The package's own loader, its module executed inside `filtered_stderr`."""

    def __init__(self, loader: Any, level: int) -> None:
        self.loader = loader
        self.level = level

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # the module keeps its real loader: resource readers and reloads go to it
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with filtered_stderr(self.level):
            self.loader.exec_module(module)


class _FirstImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, level: int) -> None:
        self.name = name
        self.level = level

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self.level)
        return spec


def quiet_tensorflow_load() -> None:
    """Hold TensorFlow's load-time native lines to TF_CPP_MIN_LOG_LEVEL (read now)."""
    level = min_log_level()
    if level == 0 or "tensorflow" in sys.modules:
        return
    if any(isinstance(finder, _FirstImportFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _FirstImportFinder("tensorflow", level))
