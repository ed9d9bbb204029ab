"""Downloading each selected image once into a shared store, verified, with a manifest."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image
from tqdm import tqdm

from flows.atomic import atomic_path, write_parquet

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"


@dataclass
class Result:
    """What happened to one image."""

    ImageID: str
    Subset: str
    Source: str
    Status: str  # ok, missing (gone upstream) or failed
    Path: str = ""
    Bytes: int = 0
    Error: str = ""
    Seconds: float = 0.0


def image_path(store: Path, subset: str, image_id: str) -> Path:
    """Where an image lives in the store; the layout of the CVDF bucket."""
    return store / subset / f"{image_id}.jpg"


def s3_client(endpoint_url: str | None) -> object:
    """An anonymous S3 client, as the public CVDF bucket needs no credentials."""
    config = Config(signature_version=UNSIGNED, retries={"max_attempts": 5, "mode": "standard"},
                    max_pool_connections=64)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", config=config)


def _verify_image(path: Path) -> None:
    """Raise if the file is not a complete, decodable image."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # Pillow raises several kinds for bad bytes
        raise ValueError(f"not a decodable image ({type(error).__name__}: {error})") from error


def _fetch_one(row: Any, store: Path, source: str, bucket: str, client: object,
               session: requests.Session) -> Result:
    dest = image_path(store, row.Subset, row.ImageID)
    result = Result(row.ImageID, row.Subset, source, "ok", str(dest))
    start = time.monotonic()
    try:
        with atomic_path(dest) as tmp:
            if source == "cvdf":
                client.download_file(bucket, f"{row.Subset}/{row.ImageID}.jpg", str(tmp))
            else:
                url = row.OriginalURL if source == "flickr" else row.Thumbnail300KURL
                with session.get(url, stream=True, timeout=60) as response:
                    response.raise_for_status()
                    with tmp.open("wb") as out:
                        for chunk in response.iter_content(1 << 16):
                            out.write(chunk)
            _verify_image(tmp)
        result.Bytes = dest.stat().st_size
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        result.Status = "missing" if code in {"404", "NoSuchKey"} else "failed"
        result.Error = f"s3 {code}: {error}"
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        result.Status = "missing" if status in {403, 404, 410} else "failed"
        result.Error = f"http {status}: {error}"
    except Exception as error:  # noqa: BLE001 - recorded in the manifest; the run goes on
        result.Status = "failed"
        result.Error = f"{type(error).__name__}: {error}"
    result.Seconds = round(time.monotonic() - start, 3)
    return result


def download_images(
    images: pd.DataFrame,
    store: Path,
    source: str = "cvdf",
    bucket: str = "open-images-dataset",
    endpoint_url: str | None = None,
    workers: int = 16,
) -> pd.DataFrame:
    """Download every image not yet in the store; return the manifest of this selection."""
    client = s3_client(endpoint_url)
    session = requests.Session()
    results: list[Result] = []
    todo = []
    for row in images.itertuples(index=False):
        dest = image_path(store, row.Subset, row.ImageID)
        if dest.exists():  # only complete, verified files are ever renamed into place
            results.append(Result(row.ImageID, row.Subset, "store", "ok", str(dest),
                                  dest.stat().st_size))
        else:
            todo.append(row)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(todo), desc="download", unit="img", disable=not todo
    ) as bar:
        futures = [pool.submit(_fetch_one, row, store, source, bucket, client, session)
                   for row in todo]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            bar.update()
            if result.Status != "ok":
                log.warning("%s %s: %s", result.ImageID, result.Status, result.Error)
    manifest = pd.DataFrame([asdict(r) for r in results], columns=list(Result.__annotations__))
    manifest = manifest.sort_values("ImageID").reset_index(drop=True)
    _merge_manifest(store / MANIFEST, manifest)
    return manifest


def _merge_manifest(path: Path, latest: pd.DataFrame) -> None:
    """Fold this run's rows into the store-wide manifest, newest status winning."""
    if path.exists():
        latest = pd.concat([pd.read_parquet(path), latest], ignore_index=True)
    merged = latest.drop_duplicates("ImageID", keep="last").sort_values("ImageID")
    write_parquet(path, merged)
