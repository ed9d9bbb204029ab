"""Scale-out without a shared disk: the refresh downloads nothing, and Dask worker processes with
folders of their own and no path into the workspace fetch the photos from the image source,
crop them and send their shards back; the flow writes them into the dataset."""

import json
import os

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_workers_that_see_only_the_image_source_build_the_dataset(
        harness, local_s3, mirror, sample_workspace, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    import flows.crop_flow
    from flows.crop_flow import chunk_runner
    from flows.pipeline import stages
    from flows.settings import Settings

    workspace, elsewhere = tmp_path / "workspace", tmp_path / "elsewhere"
    workspace.mkdir()
    elsewhere.mkdir()
    settings = Settings(workspace=workspace, metadata_url=mirror.url,
                        image_endpoint_url=local_s3.endpoint_url,
                        classes=["Hamburger", "Sandwich", "Car"], crop_from_source=True,
                        crop_chunk_images=40)
    refreshed = stages.refresh(settings)  # selected here, nothing downloaded: no image store
    assert refreshed["downloads"] == {"read from the source by the croppers":
                                      refreshed["images"]}
    assert not (workspace / "images").exists()
    assert not (workspace / "downloads.parquet").exists()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, local_directory=str(elsewhere / "dask"),
                      env={"TMPDIR": str(elsewhere / "tmp")}) as cluster, \
            Client(cluster) as client:
        os.makedirs(elsewhere / "tmp", exist_ok=True)
        for n, address in enumerate(client.scheduler_info()["workers"]):
            (elsewhere / f"w{n}").mkdir()
            client.run(os.chdir, str(elsewhere / f"w{n}"), workers=[address])
        settings = settings.model_copy(update={"dask_address": cluster.scheduler_address})
        sent, reports = [], []
        monkeypatch.setattr(flows.crop_flow, "crop_chunks",
                            Recording(flows.crop_flow.crop_chunks, sent, reports))
        built = stages.build(settings, run_chunks=chunk_runner(settings))
        worker_dirs = client.run(lambda: (os.getcwd(), os.environ.get("TMPDIR")))
    assert all(str(workspace) not in chunk and str(tmp_path / "sample") not in chunk
               for chunk in sent) and sent  # no path the workers could share
    assert all(cwd.startswith(str(elsewhere)) and tmp.startswith(str(elsewhere))
               for cwd, tmp in worker_dirs.values())
    assert len({r["dask_worker"] for r in reports}) == 2
    assert os.getpid() not in {r["pid"] for r in reports}
    table = pd.read_parquet(workspace / "dataset" / "crops.parquet")
    reference = pd.read_parquet(sample_workspace / "dataset" / "crops.parquet")
    assert built["crops"] == len(table) == len(reference)
    assert set(table.Shard) == {p.name for p in (workspace / "dataset" / "shards").iterdir()}
    mine = table.set_index("BoxID").sort_index()
    theirs = reference.set_index("BoxID").sort_index()
    assert mine.Split.equals(theirs.Split)  # the same photos in the same splits
    assert not (workspace / "images").exists()


class Recording:
    """The crop-images flow, recording the chunk data it sends and the reports it gets."""

    def __init__(self, flow, sent, reports):
        self.flow, self.sent, self.reports = flow, sent, reports

    def with_options(self, **options):
        import flows.crop_flow

        def run(names):
            self.sent.extend(json.dumps(flows.crop_flow._PENDING[n]) for n in names)
            got = self.flow.with_options(**options)(names)
            self.reports.extend(got)
            return got

        return run
