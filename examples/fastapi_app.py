"""The bridge inside a FastAPI app (docs/asgi.md). Run it with uvicorn:

    BRIDGE_FLAGS="--agent local" uvicorn examples.fastapi_app:app --port 5000 --no-access-log
"""

import os
import shlex

from fastapi import FastAPI

from server.asgi import BridgeASGI

bridge = BridgeASGI.from_flags(shlex.split(os.environ.get("BRIDGE_FLAGS", "")))
app = FastAPI(lifespan=bridge.lifespan)  # a mounted app gets no lifespan events itself


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "from the host app"}


app.mount("/", bridge)  # /incoming-call, /media-stream, /healthz, /metrics, ...
