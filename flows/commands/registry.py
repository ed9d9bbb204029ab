"""python -m flows registry: serve a workspace's embedded registry until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_PORT = 9321  # fixed, so the printed AWS_ENDPOINT_URL stays right across restarts


def add_registry_command(sub: argparse._SubParsersAction) -> None:
    """Register `registry` on the main parser."""
    parser = sub.add_parser("registry", help="serve the embedded registry on 127.0.0.1 and "
                                             "print how quilt3 reaches it")
    parser.add_argument("--workspace", type=Path,
                        help="the workspace whose registry to serve (OPENIMAGER_WORKSPACE, "
                             "else ./workspace, where the demo works too)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--dest", help="the folder the printed install commands write to "
                                       "(<workspace>/installed)")


def newest_versions(registry: str) -> dict[str, str]:
    """Each package of the registry with the top hash of its newest version."""
    from flows.publishing.s3clients import quilt3_module

    quilt3 = quilt3_module()

    return {name: quilt3.Package.browse(name, registry=registry).top_hash
            for name in sorted(quilt3.list_packages(registry=registry))}


def run_registry_command(args: argparse.Namespace) -> int:
    """Serve the registry, print how to reach it, and wait for SIGINT or SIGTERM."""
    from flows.commands.errors import BAD_INPUT, UPSTREAM
    from flows.publishing.registries import (
        EMBEDDED,
        RegistryError,
        access_lines,
        opened,
        running_endpoint,
    )
    from flows.run.shell import shown
    from flows.servers.local import PortInUse
    from flows.settings import Settings

    settings = Settings(**({"workspace": args.workspace} if args.workspace else {}))
    state_dir = settings.registry_dir.resolve()
    dest = args.dest or shown(settings.workspace / "installed")
    if url := running_endpoint(state_dir):
        print(f"error: the registry in {state_dir} is already served at {url}", file=sys.stderr)
        return BAD_INPUT
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as cleanly as on Ctrl-C
    try:
        with opened(EMBEDDED, state_dir, port=args.port) as registry:
            endpoint = os.environ["AWS_ENDPOINT_URL"]
            print(f"serving {registry} from {state_dir} at {endpoint} (Ctrl-C stops it)")
            print("\n".join(access_lines(endpoint, newest_versions(registry), dest)),
                  flush=True)
            while running_endpoint(state_dir) == endpoint:  # its server holds the folder
                time.sleep(1)
        print(f"error: the registry server stopped: see {state_dir / 's3.log'}",
              file=sys.stderr)
        return UPSTREAM
    except KeyboardInterrupt:
        pass
    except PortInUse:
        print(f"error: port {args.port} of 127.0.0.1 is taken by another program (another "
              f"registry?): serve {state_dir} on another one with --port", file=sys.stderr)
        return BAD_INPUT
    except RegistryError as error:  # the server did not start: its log's last line says why
        print(f"error: {error} (another --port may help)", file=sys.stderr)
        return BAD_INPUT
    print("registry stopped", file=sys.stderr)
    return 0
