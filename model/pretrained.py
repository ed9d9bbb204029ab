"""Whether a backbone's ImageNet weights can be had, asked before any work starts and without
loading Keras: the file Keras would look for in its cache, and the URL it would fetch it from.

Keras (keras/src/applications) caches a download as $KERAS_HOME/models/FILE (KERAS_HOME
defaults to ~/.keras, or /tmp/.keras when the home folder is not writable) and fetches FILE
from a fixed URL through urllib, which honours HTTPS_PROXY and NO_PROXY.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

# backbone -> (the URL Keras downloads from, the file name in the cache); include_top=False.
IMAGENET_FILES = {
    "MobileNetV3Small": ("https://storage.googleapis.com/tensorflow/keras-applications/"
                         "mobilenet_v3/", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "EfficientNetB0": ("https://storage.googleapis.com/keras-applications/",
                       "efficientnetb0_notop.h5"),
}


class WeightsUnreachable(Exception):
    """The ImageNet weights are not in the Keras cache and their URL does not answer."""


class WeightsMissing(ValueError):
    """The weights setting names a local file that does not exist."""


def keras_home(env: Mapping[str, str]) -> Path:
    """The folder Keras keeps its cache in, as keras.src.backend.config decides it."""
    if "KERAS_HOME" in env:
        return Path(env["KERAS_HOME"]).expanduser()
    home = Path(env.get("HOME") or "~").expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def cached_file(backbone: str, env: Mapping[str, str]) -> Path:
    """Where Keras finds (or would put) the backbone's ImageNet weights. Keras falls back to
    /tmp/.keras when its home is not writable, so that folder is where it looks then."""
    home = keras_home(env)
    if not os.access(home if home.exists() else home.parent, os.W_OK):
        home = Path("/tmp") / ".keras"
    return home / "models" / IMAGENET_FILES[backbone][1]


def weights_url(backbone: str) -> str:
    """The URL Keras downloads the backbone's ImageNet weights from."""
    base, name = IMAGENET_FILES[backbone]
    return base + name


def reach(url: str, timeout: float) -> str | None:
    """Why url cannot be fetched, or None when it answers (HEAD: nothing is downloaded)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        if error.code == 405:  # a server that takes GET only still serves the file
            return None
        return f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return str(reason) or type(reason).__name__


def imagenet_problem(backbone: str, env: Mapping[str, str], timeout: float = 5.0,
                     url: str | None = None) -> str | None:
    """Why the backbone's ImageNet weights cannot be had, or None: in the cache, or their URL
    answers. url replaces Keras's own (tests use a local server)."""
    if backbone not in IMAGENET_FILES:
        return None  # the settings refuse an unknown backbone themselves
    path = cached_file(backbone, env)
    if path.is_file():
        return None
    url = url or weights_url(backbone)
    why = reach(url, timeout)
    if why is None:
        return None
    return (f"the ImageNet weights of {backbone} are not in the Keras cache ({path}) and "
            f"cannot be downloaded from {url}: {why}")


def local_problem(weights: str) -> str | None:
    """Why a weights setting naming a local file cannot be used, or None."""
    if str(weights).strip().lower() in ("", "none", "imagenet"):
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        return (f"OPENIMAGER_WEIGHTS: the weights file {path} does not exist (use a local "
                ".weights.h5 of the backbone, 'imagenet' or 'none')")
    return None
