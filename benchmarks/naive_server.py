"""The naive baseline: the common tutorial FastAPI app that calls model.predict per request.

    NAIVE_MODEL=path/model.keras NAIVE_CLASSES='["A", "B"]' \\
        uvicorn benchmarks.naive_server:app --workers 2 --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

import numpy as np
from fastapi import FastAPI, UploadFile
from PIL import Image


@cache
def model() -> Any:
    """The Keras model, loaded once per worker."""
    import keras

    return keras.saving.load_model(os.environ["NAIVE_MODEL"], compile=False)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Load the model before the first request, as the tutorials do."""
    model()
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/classify")
async def classify(image: UploadFile) -> dict:
    """Decode the upload and call model.predict on it, in the request handler."""
    classes = json.loads(os.environ["NAIVE_CLASSES"])
    pixels = np.asarray(Image.open(io.BytesIO(await image.read())).convert("RGB"))
    output = model().predict(pixels[None], verbose=0)[0]
    probs = [1 - float(output[0]), float(output[0])] if len(classes) == 2 else output.tolist()
    best = int(np.argmax(probs))
    return {"label": classes[best], "probability": probs[best]}
