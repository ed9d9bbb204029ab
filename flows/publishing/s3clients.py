"""quilt3, loaded with its S3 clients sharing one botocore data loader per process."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def quilt3_module() -> ModuleType:
    """quilt3 (about 4 s to import: only what publishes or installs pays for it).

    quilt3 builds a new boto3 session for each S3 client, seven per push, and each session's
    own loader parses botocore's S3 model again: about 0.5 s of CPU per client. Its client
    hook hands every one of those sessions the same loader, which caches what it parsed.
    """
    import botocore.loaders
    import quilt3
    import quilt3.hooks

    loader = botocore.loaders.create_loader()

    def shared_loader(build, session, client_kwargs):
        session._session.register_component("data_loader", loader)
        return build(session, client_kwargs)

    if quilt3.hooks.get_build_s3_client_hook() is None:  # a user's own hook stays
        quilt3.hooks.set_build_s3_client_hook(shared_loader)
    return quilt3
