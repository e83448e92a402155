"""One size-on-disk measure for evaluation, export manifests and model cards: every weight format counts."""

from __future__ import annotations

from pathlib import Path

from potstill.evaluate.perf import size_on_disk_mb


def test_every_weight_format_counts_and_nothing_else(tmp_path: Path) -> None:
    sizes = {
        "model.safetensors": 3,
        "pytorch_model.bin": 1,
        "state.pt": 2,
        "student.gguf": 5,
        "model.onnx": 1,
        "model.onnx.data": 7,  # ONNX external weights
        "tokenizer.json": 11,
        "config.json": 13,
        "README.md": 17,
    }
    for name, mib in sizes.items():
        (tmp_path / name).write_bytes(b"\0" * (mib << 20))
    (tmp_path / "adapter").mkdir()
    assert size_on_disk_mb(tmp_path) == 3 + 1 + 2 + 5 + 1 + 7
    assert size_on_disk_mb(tmp_path / "missing-model") is None
