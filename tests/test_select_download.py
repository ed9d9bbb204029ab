"""Selecting boxes on the sample and downloading each image once from a CVDF-like bucket."""

import pandas as pd
import pytest

from flows.openimages.download import MANIFEST, download_images
from flows.openimages.metadata import Metadata
from flows.openimages.select import Filters, images_of, select_boxes


@pytest.fixture(scope="module")
def selection(mirror, tmp_path_factory):
    store = Metadata(mirror.url, tmp_path_factory.mktemp("meta")).refresh()
    return select_boxes(store, store.ontology(), ["hamburger", "Sandwich", "Car"], Filters())


def test_selection_labels_each_box_once_with_image_info(selection):
    assert set(selection.Class) == {"Hamburger", "Sandwich", "Car"}
    assert selection.BoxID.is_unique
    assert not (selection.IsDepiction == 1).any() and not (selection.IsGroupOf == 1).any()
    assert selection.Author.notna().all() and "Rotation" in selection
    # Submarine sandwiches count as Sandwich; hamburgers stay Hamburger.
    assert set(selection[selection.LabelName == "/m/06pcq"].Class) <= {"Sandwich"}
    assert set(selection[selection.LabelName == "/m/0cdn1"].Class) == {"Hamburger"}


def test_each_image_downloads_once_and_reruns_skip(selection, local_s3, tmp_path):
    images = images_of(selection)
    assert selection.ImageID.nunique() == len(images) < len(selection)
    manifest = download_images(images, tmp_path, endpoint_url=local_s3.endpoint_url, workers=8)
    assert manifest.ImageID.is_unique and len(manifest) == len(images)
    ok = manifest[manifest.Status == "ok"]
    assert len(ok) >= len(images) - 2
    gone = manifest[manifest.Status == "gone"]
    assert len(gone) >= 1 and gone.Error.str.contains("404").all()
    assert not list(tmp_path.rglob("*.part"))
    again = download_images(images, tmp_path, endpoint_url=local_s3.endpoint_url)
    # Nothing fetched again: every row is the first run's, time of arrival included.
    assert again.equals(manifest)
    assert pd.read_parquet(tmp_path / MANIFEST).ImageID.is_unique


def test_a_corrupt_object_is_recorded_and_never_lands(local_s3, tmp_path):
    local_s3.client().put_object(Bucket="open-images-dataset", Key="train/00000000deadbeef.jpg",
                                 Body=b"\xff\xd8\xff\xe0 not really a jpeg", ACL="public-read")
    images = pd.DataFrame([{"ImageID": "00000000deadbeef", "Subset": "train"}])
    manifest = download_images(images, tmp_path, endpoint_url=local_s3.endpoint_url)
    assert manifest.Status.tolist() == ["failed"]
    # The structure check names what is wrong (a full decode would say "not decodable").
    assert "JPEG damaged or cut short" in manifest.Error[0]
    assert not (tmp_path / "train" / "00000000deadbeef.jpg").exists()
