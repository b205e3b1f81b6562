"""TensorFlow's load-time native log lines, held to `TF_CPP_MIN_LOG_LEVEL` like the rest of it.

TensorFlow's shared libraries log while they are being loaded, from C++ static initialisers,
before its own logging has read `TF_CPP_MIN_LOG_LEVEL`: absl then writes every line to stderr,
after a notice saying so. Which lines appear depends on the CPU: where oneDNN is on by default
(AVX-512, AMX), port.cc says "oneDNN custom operations are on" twice. The setting is ignored
for exactly those lines, so the step's log would change with the machine it runs on.

`quiet_tensorflow_load()` applies the setting to them: the first `import tensorflow` of the
process (directly, or through Keras) runs with file descriptor 2 on a pipe to a small filter
process (this file run as a script), which passes every line on unchanged as it arrives except
absl-formatted lines below the level and absl's notice. A process, not a thread: the libraries
load while the import holds Python's lock, so a thread could not read until the load is over
(a full pipe would hang it), and a load that aborts would take the thread's unwritten lines
with it; the filter process forwards them and ends when the pipe closes. oneDNN itself stays as
TensorFlow chose; only the announcement is held back. While the import runs, any line in absl's
format is held to the level, a Python absl log line included (none is written there today).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import subprocess
import sys
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


def forward(source: int, target: int, level: int) -> None:
    """Copy lines from `source` to `target` as they come, leaving out those `keep` refuses."""
    pending = b""
    while chunk := os.read(source, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        _write_all(target, b"".join(line + b"\n" for line in lines if keep(line, level)))
    if pending and keep(pending, level):
        _write_all(target, pending)


def _write_all(target: int, data: bytes) -> None:
    while data:
        data = data[os.write(target, data) :]


@contextlib.contextmanager
def filtered_stderr(level: int) -> Iterator[None]:
    """File descriptor 2 through the filter process while the block runs (native writes too)."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        # -I: the filter sees no PYTHON* variables and imports nothing of the caller's
        filter_process = subprocess.Popen(
            [sys.executable, "-I", __file__, str(level)], stdin=read_end, stdout=original
        )
    except OSError:  # no filter: the lines pass as they are
        os.close(read_end)
        os.close(write_end)
        os.close(original)
        yield
        return
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end here: the filter drains it and ends
        os.close(original)
        with contextlib.suppress(subprocess.TimeoutExpired):
            # a child started during the import may hold the pipe: never wait on it for long
            filter_process.wait(timeout=10)


class _FilteredLoader(importlib.abc.Loader):
    """The package's own loader, its module executed inside `filtered_stderr`."""

    def __init__(self, loader: Any, level: int, finder: _FirstImportFinder) -> None:
        self.loader = loader
        self.level = level
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.finder.remove()  # once: the real finders answer from here on
        # the module keeps its real loader: resource readers and reloads go to it
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with filtered_stderr(self.level):
            self.loader.exec_module(module)


class _FirstImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of `name` until the module is actually executed: a mere lookup
    (`importlib.util.find_spec`) does not use it up."""

    def __init__(self, name: str, level: int) -> None:
        self.name = name
        self.level = level

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:  # the spec the other finders would give
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _FilteredLoader(spec.loader, self.level, self)
                return spec
        return None

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def quiet_tensorflow_load() -> None:
    """Hold TensorFlow's load-time native lines to TF_CPP_MIN_LOG_LEVEL (read now)."""
    level = min_log_level()
    if level == 0 or "tensorflow" in sys.modules:
        return
    if any(isinstance(finder, _FirstImportFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _FirstImportFinder("tensorflow", level))


if __name__ == "__main__":  # the filter process: stdin to stdout
    forward(0, 1, int(sys.argv[1]))
