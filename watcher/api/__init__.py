"""The merchant API (issue 10): an aiohttp listener under /v1, described by openapi.yaml beside this file.

`server` binds and routes, `auth` decides who is calling (key, network, rate), `inputs` validates request
bodies and query parameters by hand (fast; the tests hold them to the document), `views` are the handlers,
`render` turns the daemon's values into the document's JSON, `refusals` is the one error shape.
"""

from watcher.api.server import ApiServer

__all__ = ["ApiServer"]
