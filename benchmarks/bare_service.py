"""The bare baseline of benchmarks/serve.py: BentoML routes that only decode the upload.

`POST /classify` is a BentoML API taking the image as a multipart file; `POST /decode` is a
route of a mounted FastAPI app reading the raw request body. Both decode the upload to the
model's input with openimager's own decoder (service.images.prepare) in a worker thread, as
any server must to keep its event loop free, and answer a constant. What openimager's service
spends beyond them is its own: upload checks, batching, the prediction log, the answer.

    BARE_IMAGE_SIZE=150 bentoml serve benchmarks.bare_service:Bare
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import bentoml
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.images import prepare

SIZE = int(os.environ.get("BARE_IMAGE_SIZE", "150"))
ANSWER = {"labels": [{"label": "Hamburger", "probability": 1.0}]}
app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/decode")
async def decode(request: Request) -> Response:
    """Decode the raw body in a thread; a constant answer."""
    data = await request.body()
    await anyio.to_thread.run_sync(prepare, data, SIZE)
    return JSONResponse(ANSWER)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="bare", workers=int(os.environ.get("BARE_WORKERS", "1")))
class Bare:
    """Decodes uploads and answers a constant."""

    @bentoml.api(route="/classify")
    async def classify(self, image: Path) -> dict:
        """Decode the multipart file in a thread; a constant answer."""
        await anyio.to_thread.run_sync(prepare, image, SIZE)
        return ANSWER


for api in Bare.apis.values():  # as openimager's service does (service.predictor.json_output)
    api.output_spec.media_type = "application/json"
