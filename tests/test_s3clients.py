"""S3 clients, quilt3's included, parse botocore's S3 model once per process."""

from __future__ import annotations


def test_new_clients_do_not_parse_the_s3_model_again(monkeypatch):
    import botocore.loaders

    from flows.publishing.s3clients import boto3_session, quilt3_module

    quilt3_module()
    from quilt3.data_transfer import S3ClientProvider

    parsed = []
    original = botocore.loaders.JSONFileLoader.load_file

    def load_file(self, file_path):
        parsed.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", load_file)
    for _ in range(3):  # each a new session, as quilt3 builds them
        assert S3ClientProvider().standard_client.meta.service_model.service_name == "s3"
        boto3_session().client("s3", region_name="us-east-1")
    s3_models = [path for path in parsed if "/s3/" in path and path.endswith("service-2")]
    assert len(s3_models) <= 1, s3_models  # none when an earlier test parsed it already
