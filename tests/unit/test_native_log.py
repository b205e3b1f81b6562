"""TensorFlow's load-time native lines held to TF_CPP_MIN_LOG_LEVEL, on any CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lepton_tasks.native_log import ABSL_PREINIT_NOTICE, keep, min_log_level

ONEDNN = (
    b"I0000 00:00:1796689647.581838    2308 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results"
)
STAMPED_ERROR = b"E1208 02:14:07.123456   77 cuda_dnn.cc:8579] Unable to register cuDNN factory"


@pytest.mark.parametrize(
    ("line", "level", "kept"),
    [
        (ONEDNN, 2, False),
        (ONEDNN, 1, False),
        (ONEDNN, 0, True),
        (ABSL_PREINIT_NOTICE, 2, False),
        (ABSL_PREINIT_NOTICE, 0, True),
        (STAMPED_ERROR, 2, True),
        (STAMPED_ERROR, 3, False),
        (b"W1208 02:14:07.123456   77 x.cc:1] a warning", 2, False),
        (b"W1208 02:14:07.123456   77 x.cc:1] a warning", 1, True),
        # the step's own lines, Python tracebacks and anything unformatted always pass
        (b"INFO lepton_tasks.steps.train: epoch 1/5", 3, True),
        (b"Traceback (most recent call last):", 3, True),
        (b"I can't read this file", 3, True),
        (b"", 2, True),
    ],
)
def test_only_absl_lines_below_the_level_and_the_notice_are_dropped(
    line: bytes, level: int, kept: bool
) -> None:
    assert keep(line, level) is kept


@pytest.mark.parametrize(("raw", "level"), [("2", 2), ("0", 0), ("", 0), ("verbose", 0), ("9", 0)])
def test_the_level_is_read_as_tensorflow_reads_it(
    raw: str, level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", raw)
    assert min_log_level() == level


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
        check=True,
    )


def test_native_writes_to_stderr_pass_the_filter_in_order() -> None:
    """Writes to file descriptor 2 itself (as C++ makes them), split across reads, a last line
    without a newline, and what follows the block unfiltered."""
    done = run_python(
        f"""
        import os
        from lepton_tasks.native_log import filtered_stderr
        with filtered_stderr(2):
            os.write(2, b"first\\n" + {ABSL_PREINIT_NOTICE!r} + b"\\n" + {ONEDNN!r}[:40])
            os.write(2, {ONEDNN!r}[40:] + b"\\n" + {STAMPED_ERROR!r} + b"\\nlast, unended")
        os.write(2, b"\\nafter: " + {ONEDNN!r} + b"\\n")
        """
    )
    assert done.stderr.decode().splitlines() == [
        "first",
        STAMPED_ERROR.decode(),
        "last, unended",
        "after: " + ONEDNN.decode(),
    ]


def test_a_flood_during_the_block_neither_hangs_nor_loses_a_line() -> None:
    """Several megabytes, far more than a pipe holds, written while Python's lock stays held
    (as a library logs while it loads): the filter is a process, so nothing waits on the lock."""
    done = run_python(
        f"""
        import ctypes
        from lepton_tasks.native_log import filtered_stderr
        libc = ctypes.PyDLL(None)  # calls that keep Python's lock held, as a library load does
        flood = b"".join({ONEDNN!r} + b"\\n" + f"kept {{n}}\\n".encode() for n in range(20_000))
        with filtered_stderr(2):
            view = memoryview(flood)
            while view:
                view = view[libc.write(2, bytes(view), len(view)):]
        """
    )
    lines = done.stderr.decode().splitlines()
    assert lines == [f"kept {n}" for n in range(20_000)]


def test_lines_written_before_an_abort_still_reach_stderr() -> None:
    """A library that aborts while loading: its last words are what the user needs."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os
            from lepton_tasks.native_log import filtered_stderr
            with filtered_stderr(2):
                os.write(2, b"F1208 02:14:07.123456 77 cpu.cc:9] this CPU lacks AVX\\n")
                os.abort()
            """
        )],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert b"this CPU lacks AVX" in done.stderr


LOAD_KERAS = """
import importlib.util
from lepton_tasks.native_log import quiet_tensorflow_load
quiet_tensorflow_load()
assert importlib.util.find_spec("tensorflow") is not None  # a lookup leaves the hook in place
import keras  # loads TensorFlow, its backend
import tensorflow as tf
assert type(tf.__spec__.loader).__module__ != "lepton_tasks.native_log"
print(int(tf.constant(1) + 1))
"""


def test_loading_tensorflow_leaves_no_native_startup_lines_whatever_the_cpu() -> None:
    """TF_ENABLE_ONEDNN_OPTS=1 turns oneDNN on, and its announcement, on every x86 CPU: the
    same lines an AVX-512 machine prints by default. At level 0 they show (so the check below
    is not empty); at the step's level 2 they are held back, and TensorFlow works."""
    forced = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    shown = run_python(LOAD_KERAS, TF_CPP_MIN_LOG_LEVEL="0", **forced)
    assert b"oneDNN custom operations are on" in shown.stderr
    quiet = run_python(LOAD_KERAS, TF_CPP_MIN_LOG_LEVEL="2", **forced)
    assert quiet.stdout.strip() == b"2"
    assert b"oneDNN" not in quiet.stderr and b"absl::InitializeLog" not in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if not keep(line, 2)]
