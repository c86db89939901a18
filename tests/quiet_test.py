"""A quiet start: TensorFlow's C++ and libjpeg lines dropped at fd 2, nothing else."""

import os
import subprocess
import sys

import pytest

from tests import testing_utils
from vse_tf import quiet

# Lines as TensorFlow 2.21 and libjpeg print them (copied from real runs).
NOISE = [
    b"E0000 00:00:1796308254.594991   13979 cuda_platform.cc:52] failed call to "
    b"cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"W0000 00:00:1796310046.506040   23671 local_rendezvous.cc:412] Local "
    b"rendezvous is aborting with status: INVALID_ARGUMENT: jpeg::Uncompress failed.",
    b"\t [[{{function_node __inference_map_while_9172_813}}{{node DecodeImage}}]]",
    b"WARNING: All log messages before absl::InitializeLog() is called are written "
    b"to STDERR",
    b"Corrupt JPEG data: premature end of data segment",
    b"Unsupported marker type 0x53",
    b"Custom ops: FastBertNormalize, FastWordpieceTokenizeWithOffsets",
    b"See instructions: https://www.tensorflow.org/lite/guide/ops_custom",
]
KEPT = [
    b"error: corrupt.jpg: a JPEG whose data does not decode (bad data)",
    # Python absl lines carry the month and day: ours, and kept.
    b"W1203 15:00:03.787389 140028621802368 index_build.py:304] 3 of 9 skipped",
    b"Traceback (most recent call last):",
    b"index: 9/9 images, 10.0 images/s, 0:01 elapsed",
]


@pytest.mark.parametrize("line", NOISE)
def test_noise_lines_match(line):
    assert quiet.NOISE.match(line)


@pytest.mark.parametrize("line", KEPT)
def test_our_lines_do_not_match(line):
    assert not quiet.NOISE.match(line)


_CHILD = r"""
import os, sys
from vse_tf import quiet
assert quiet.filter_stderr(sys.argv[1:])
os.write(2, sys.argv[-1].encode().replace(b"|", b"\n"))
print("error: the last line", file=sys.stderr)
"""


def _run(*args, env_level=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if env_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = env_level
    return subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        cwd=testing_utils.REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_the_filter_drops_noise_and_passes_the_rest_through_exit():
    lines = b"|".join([NOISE[0], b"keep me", NOISE[4], KEPT[1], b""]).decode()
    result = _run(lines)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines() == [
        "keep me",
        KEPT[1].decode(),
        "error: the last line",
    ]


def test_verbosity_or_a_users_log_level_turns_the_filter_off():
    result = _run("--verbosity=1", NOISE[4].decode())
    assert result.returncode == 1 and b"AssertionError" in result.stderr
    result = _run(NOISE[4].decode(), env_level="0")
    assert result.returncode == 1 and b"AssertionError" in result.stderr
