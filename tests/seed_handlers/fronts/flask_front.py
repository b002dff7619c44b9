"""The signature check in front of Coinskro's Flask handler: ../flask_app.py, imported unchanged.

Flask runs checks before a route with `before_request`, so the check lives in the handler's own process
and the handler's file stays as published: this module loads it, registers the check, and serves it as
the handler itself would (`app.run(port=3000)`). The check is the documented one, imported, not copied:
`signature_ok` of docs/examples/webhook_verify.py (which reads WEBHOOK_SECRET from the environment).
A request with a bad or missing X-Coinskro-Signature gets `401 invalid signature` and never reaches
the handler.

Run from anywhere: WEBHOOK_SECRET=... python3 tests/seed_handlers/fronts/flask_front.py
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from flask import request

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def load(name: str, path: Path) -> ModuleType:
    """The module in `path`, imported under `name` (neither directory is a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask finds its app's root through the module
    spec.loader.exec_module(module)
    return module


documented = load("webhook_verify", ROOT / "docs" / "examples" / "webhook_verify.py")
seed = load("flask_app", HERE.parent / "flask_app.py")


@seed.app.before_request
def check_signature() -> tuple[str, int] | None:
    # get_data() keeps the body: the handler's request.json parses the same bytes afterwards.
    if not documented.signature_ok(request.get_data(), request.headers.get("X-Coinskro-Signature", "")):
        return "invalid signature", 401
    return None  # on to the handler


if __name__ == "__main__":
    seed.app.run(port=3000)  # as the handler's own `__main__` does
