"""One typed settings object for every stage, read from OPENIMAGER_* variables.

A plain pydantic model that reads its variables itself (Settings.__init__): pydantic-settings
did the same and more (dotenv files, secrets, a CLI, cloud stores) for 0.07 s of CPU in every
command (asyncio, dotenv, its sources), a sixth of a warm selection once pandas was gone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.openimages import MIN_BOX_PIXELS

OFFICIAL_METADATA_URL = "https://storage.googleapis.com/openimages"
FlagRule = Literal["any", "exclude", "only"]
Version = Literal["v4", "v5", "v6", "v7"]
Architecture = Literal["transfer", "seed-cnn"]
Runner = Literal["threads", "dask"]
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
CVDF_BUCKET = "open-images-dataset"
PREFIX = "OPENIMAGER_"


class Settings(BaseModel):
    """Configuration of a pipeline run: OPENIMAGER_* variables, which the values given (flow
    parameters, CLI flags) override."""

    # As pydantic-settings had it: unknown names ignored, defaults validated too.
    model_config = ConfigDict(extra="ignore", validate_default=True)

    workspace: Path = Path("workspace")
    metadata_url: str = OFFICIAL_METADATA_URL
    openimages_version: Version = "v6"
    # The environment gives "train,validation" (or JSON), parsed by split_list.
    splits: list[Split] = Field(default_factory=lambda: list(SPLITS), min_length=1)
    check_upstream: bool = True  # ask upstream (ETag, Last-Modified, size) before reusing files
    metadata_cache: bool = True  # select from the columnar cache instead of streaming the CSVs

    # Every list may come as "a,b" as well as JSON (list_items).
    classes: list[str] = Field(default_factory=lambda: ["Hamburger", "Sandwich"])
    exclude_classes: list[str] = Field(default_factory=list)
    include_subclasses: bool = True
    relabel_subclasses: bool = True
    depiction: FlagRule = "exclude"
    group_of: FlagRule = "exclude"
    occluded: FlagRule = "any"
    truncated: FlagRule = "any"
    inside: FlagRule = "any"
    box_source: Literal["any", "xclick", "activemil"] = "any"
    min_box_fraction: float = 0.0
    max_images_per_class: int | None = None
    balance_classes: bool = False
    selection_seed: int = 0

    image_source: Literal["cvdf", "flickr", "thumbnail"] = "cvdf"
    # Tried in order for an image image_source cannot deliver, e.g. ["flickr", "thumbnail"].
    image_fallback_sources: list[Literal["cvdf", "flickr", "thumbnail"]] = Field(
        default_factory=list)
    image_bucket: str = CVDF_BUCKET
    # Explicit, so an AWS_ENDPOINT_URL meant for the registry never redirects image downloads.
    image_endpoint_url: str = "https://s3.amazonaws.com"
    # Image download (flows/openimages/downloader.py DownloadOptions).
    download_workers: int = 64  # requests in flight per process
    download_per_host: int = 64  # of which at most this many to one host
    download_retries: int = 4  # more attempts after a timeout, reset, short body, 5xx or 429
    download_timeout: float = 30.0  # longest silence on a connection, seconds
    download_deadline: float = 300.0  # longest time for one response, however it trickles
    download_chunk_images: int = 500  # images per chunk; one Prefect task each
    download_verify: bool = False  # re-read and re-check every image already in the store
    download_placeholder_md5s: list[str] = Field(default_factory=list)  # "photo unavailable"
    download_parallel_chunks: int = 2  # chunks at once on the thread runner
    # Where the Prefect flows run their chunk tasks (downloads and crops): threads in the
    # flow's process, or Dask: the scheduler at dask_address, else a loopback LocalCluster.
    task_runner: Runner = "threads"
    dask_address: str | None = None
    dask_workers: int = 2  # LocalCluster worker processes

    crop_size: int = 256
    crop_padding: float = 0.0
    crop_quality: int = 90
    # Least share of min(box, crop_size) a crop keeps on its longest side when a smaller
    # decode or a block average saves work; 1.0: exact thumbnail sizes (crop.py CropOptions).
    crop_min_detail: float = Field(0.75, gt=0.5, le=1.0)
    crop_chunk_images: int = 500  # images per crop chunk; one Prefect task and one shard each
    crop_files: bool = False  # also write per-crop JPEGs under dataset/crops, for browsing
    # Croppers fetch each photo from image_bucket at image_endpoint_url (<Subset>/<ImageID>.jpg)
    # instead of reading the image store: Dask workers then need no disk of the flow's.
    crop_from_source: bool = False
    crop_workers: int | None = None  # processes (threads under Prefect); None: every core
    max_crops_per_class: int | None = None
    min_box_pixels: int = MIN_BOX_PIXELS  # why 32: flows/openimages/__init__.py
    split_seed: int = 0
    validation_fraction: float = 0.15
    test_fraction: float = 0.15

    # Training (model/train.py TrainConfig). The default is ImageNet transfer learning, whose
    # weights download from the same host as the metadata; the offline demo uses seed-cnn.
    architecture: Architecture = "transfer"
    backbone: Literal["MobileNetV3Small", "EfficientNetB0"] = "MobileNetV3Small"
    weights: str | None = "imagenet"  # "imagenet", a local .weights.h5 of the backbone, "none"
    image_size: int = 150
    epochs: int = 10
    batch_size: int = 32
    patience: int = 3
    learning_rate: float = 1e-3
    fine_tune_layers: int = 0  # top backbone layers trained after the head; 0: none
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5
    class_weights: bool = False
    seed: int = 1337
    # The gate: promote a new model only if it beats the promoted one on this test metric, on
    # the same test photos (paired bootstrap), by more than the margin at the confidence.
    promotion_metric: Literal["macro_f1", "accuracy", "roc_auc"] = "macro_f1"
    promotion_margin: float = Field(0.0, ge=0.0, le=1.0)
    promotion_confidence: float = Field(0.95, gt=0.5, lt=1.0)
    # Test photos (a stable hash of ImageID) the gate never scores: an unbent published figure.
    holdout_share: float = Field(0.25, ge=0.0, lt=1.0)
    force_promote: bool = False
    # A model already trained on the same dataset, config and code is reused, not trained again.
    reuse_trained: bool = True
    # After a promotion, `bentoml build` the Bento of the new model (on in prefect.yaml's
    # deployments; off for the command line and the tests, where it costs a minute).
    build_bento: bool = False

    model_name: str = "openimager-classifier"
    # "embedded": a local S3 registry kept in registry_dir; or any s3:// bucket.
    registry: str = "embedded"
    publish_images: bool = False  # put the source photos of the crops in data/images/
    publish_uncommitted: bool = True  # warn, not refuse, when the checkout has changes
    package_name: str = "openimager/classifier"

    # Data checks before training (flows/watching/datachecks.py): an anomaly stops the run unless
    # accepted. Relative checks compare with the promoted model's dataset.
    accept_anomalies: bool = False
    check_max_class_drop: float = 0.5  # largest share of a class's crops that may vanish
    check_max_download_failures: float = 0.2  # largest share of images not downloaded
    check_max_skip_rate: float = 0.2  # largest share of boxes not cropped
    check_max_size_change: float = 0.5  # largest relative change of a median box/image side
    # The service's prediction log (docs/watching-pipeline.md); None: <workspace>/predictions.
    prediction_log_dir: str | None = None
    prediction_log: bool = True
    # The service's threshold under which an answer is "unsure"; drift counts those answers.
    min_confidence: float = Field(0.6, ge=0.0, le=1.0)
    # Kept images with a feedback label join the train split (never validation or test).
    use_feedback: bool = False
    # At most this share of each class's train split may be feedback (the oldest kept).
    feedback_max_share: float = Field(0.2, ge=0.0, le=1.0)
    publish_feedback: bool = False  # their licence is unknown: left out of packages by default
    # Shadow replay before a promotion (flows/watching/shadow.py): the candidate and the
    # promoted model classify the uploads the service kept since the promotion. A candidate
    # agreeing with fewer of the promoted model's confident answers, or with a lower accuracy
    # on the labelled ones, than these minimums is refused (0 turns a check off).
    shadow_replay: bool = True
    shadow_min_agreement: float = Field(0.8, ge=0.0, le=1.0)
    shadow_min_feedback_accuracy: float = Field(0.0, ge=0.0, le=1.0)
    shadow_confident: float = Field(0.8, ge=0.0, le=1.0)
    shadow_min_images: int = Field(20, ge=1)  # fewer to judge on: reported, not applied
    shadow_max_images: int = Field(2000, ge=1)  # the newest kept uploads replayed

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**environment(os.environ), **values})

    @field_validator("splits", mode="before")
    @classmethod
    def split_list(cls, value: object) -> object:
        """Accept "train,validation" and '["train"]' as well as a list."""
        return parse_splits(value) if isinstance(value, str) else value

    @field_validator("metadata_url")
    @classmethod
    def local_mirror(cls, value: str) -> str:
        """A value without a scheme is a local folder, taken as its absolute file:// URL."""
        return mirror_url(value)

    @field_validator("classes", "exclude_classes", "image_fallback_sources",
                     "download_placeholder_md5s", mode="before")
    @classmethod
    def list_items(cls, value: object) -> object:
        """Accept "Hamburger,Ice cream" and '["Hamburger"]' as well as a list."""
        return parse_list(value) if isinstance(value, str) else value

    @property
    def metadata_dir(self) -> Path:
        return self.workspace / "metadata"

    @property
    def image_dir(self) -> Path:
        return self.workspace / "images"

    @property
    def dataset_dir(self) -> Path:
        return self.workspace / "dataset"

    @property
    def registry_dir(self) -> Path:
        return self.workspace / "registry"

    @property
    def model_dir(self) -> Path:
        return self.workspace / "model"

    @property
    def predictions_dir(self) -> Path:
        return Path(self.prediction_log_dir) if self.prediction_log_dir else \
            self.workspace / "predictions"


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """The settings given as OPENIMAGER_* variables (names in any case), as text: the fields'
    validators parse it, so a bad value fails as a bad flag does."""
    fields = Settings.model_fields
    found = {}
    for key, value in env.items():
        name = key[len(PREFIX):].lower()
        if key[:len(PREFIX)].upper() == PREFIX and name in fields:
            found[name] = value
    return found


def parse_list(text: str) -> list[str]:
    """Items from a JSON list or "a,b": commas only, as class names hold spaces."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_splits(text: str) -> list[str]:
    """Split names from "train,validation", "train validation" or a JSON list; an empty list
    or an unknown name is left for the Settings validation to name."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part for part in text.replace(",", " ").split() if part]


def mirror_url(text: str) -> str:
    """The metadata URL of text: an URL as it is, an existing folder as its file:// URL."""
    if "://" in text or text.startswith("file:"):
        return text
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError(f"{text!r} is neither a URL nor a local folder: give an http(s):// "
                         "URL of a metadata mirror or the path of a local copy")
    return path.resolve().as_uri()
