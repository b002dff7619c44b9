"""The checked-in OpenAPI document (openapi.yaml, shipped as package data), parsed once and served as JSON."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml


@functools.cache
def document() -> dict[str, Any]:
    text = resources.files("watcher.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@functools.cache
def document_json() -> bytes:
    return json.dumps(document(), ensure_ascii=False).encode("utf-8")
