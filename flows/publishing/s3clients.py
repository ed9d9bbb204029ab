"""S3 clients and quilt3 that parse botocore's models once per process."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def shared_loader():
    """One botocore data loader, which caches the models it parsed (S3's: about 0.5 s of CPU)."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def boto3_session():
    """A new boto3 session (no credentials cached from before) on the shared loader."""
    import boto3

    session = boto3.session.Session()
    session._session.register_component("data_loader", shared_loader())
    return session


@functools.cache
def quilt3_module() -> ModuleType:
    """quilt3 (about 4 s to import: only what publishes or installs pays for it).

    quilt3 builds a new boto3 session for each S3 client, seven per push, each of which would
    parse botocore's S3 model again: its client hook hands them the shared loader.
    """
    import quilt3
    import quilt3.hooks

    def on_shared_loader(build, session, client_kwargs):
        session._session.register_component("data_loader", shared_loader())
        return build(session, client_kwargs)

    if quilt3.hooks.get_build_s3_client_hook() is None:  # a user's own hook stays
        quilt3.hooks.set_build_s3_client_hook(on_shared_loader)
    return quilt3
