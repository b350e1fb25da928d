"""An image carried by a tool call's arguments, as one frame source of the proxy.

A tool such as `inspect_and_pick(object, image)` may carry the camera view itself. The value
may be MCP image content (`{"type": "image", "data": BASE64, "mimeType": "image/png"}`), a
data URL (`data:image/png;base64,...`) or bare base64 of an encoded image. The judge never
reads that base64 as action text: the proposal gets a short marker in its place.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from guard.errors import InvalidInputError

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def is_image_content(value: Any) -> bool:
    """Whether `value` is MCP image content (a mapping with type "image" and data)."""
    return isinstance(value, Mapping) and value.get("type") == "image" and "data" in value


def image_bytes(value: Any, where: str) -> bytes:
    """The encoded image (PNG, JPEG, ...) that an argument value holds.

    Args:
        value: MCP image content, a base64 data URL, or bare base64 text.
        where: The argument's name, for the error message.

    Raises:
        InvalidInputError: the value holds no image in any of those forms.
    """
    data: Any = value.get("data") if is_image_content(value) else value
    if not isinstance(data, str):
        raise InvalidInputError(
            f"argument '{where}' holds no image: expected MCP image content, a data URL or "
            f"base64 text, got {type(value).__name__}"
        )
    data = _DATA_URL.sub("", data.strip(), count=1)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"argument '{where}' is not valid base64 image data") from None


def judged_arguments(arguments: Mapping[str, Any], image_argument: str | None) -> dict[str, Any]:
    """The call's arguments as the judge and the audit log see them: the image argument, and
    any MCP image content among the arguments, become a short marker."""
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if key == image_argument or is_image_content(value):
            size = len(value.get("data", "")) if is_image_content(value) else len(str(value))
            out[key] = f"<image, {size} base64 characters>"
        else:
            out[key] = value
    return out


__all__ = ["image_bytes", "is_image_content", "judged_arguments"]
