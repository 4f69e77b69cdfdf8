"""GPU memory size lookup of the TensorFlow services: the visible index maps to what nvidia-smi knows.

nvidia-smi does not exist on CPU machines; a stand-in script on PATH answers with the memory of the device it is
asked about, so the mapping of ``CUDA_VISIBLE_DEVICES`` can be checked anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsef_protocol.tf_runtime import gpu_total_mb


@pytest.fixture()
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text('#!/bin/sh\n# the device follows -i\nwhile [ "$1" != "-i" ]; do shift; done\n'
                      'case "$2" in 5) echo 24576 ;; GPU-abc) echo 81920 ;; 0) echo 16384 ;; *) exit 6 ;; esac\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("visible, index, expected", [
    (None, 0, 16384),          # no allocation: the index is nvidia-smi's
    ("3,5", 1, 24576),         # the second visible GPU is physical GPU 5
    ("GPU-abc", 0, 81920),     # a scheduler's UUID allocation
    ("3,5", 0, None),          # nvidia-smi fails for GPU 3: unknown, not a wrong size
])
def test_visible_index_maps_to_the_physical_gpu(nvidia_smi: None, monkeypatch: pytest.MonkeyPatch,
                                                visible: str | None, index: int, expected: int | None) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_total_mb(index) == expected
