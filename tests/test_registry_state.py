"""The embedded registry's state: only changes are kept, compacted, restored exactly, and an
old request log is migrated once without a window for losing data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.s3.models import s3_backends

from flows.publishing.registries import EMBEDDED, EMBEDDED_BUCKET, opened
from flows.servers.local import TELEMETRY_OFF, LocalS3, free_port, wait_http
from flows.servers.s3state import JOURNAL, SNAPSHOT, StateStore

ROOT = Path(__file__).resolve().parent.parent


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def state_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def versioned_bucket(s3, name: str = "bkt") -> None:
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def client():
    return boto3.client("s3", region_name="us-east-1")


def test_only_changes_are_journaled_and_reads_leave_the_state_alone(tmp_path):
    store = StateStore(tmp_path / "s3")
    with mock_aws():
        s3 = client()
        versioned_bucket(s3)
        for i in range(3):
            s3.put_object(Bucket="bkt", Key=f"k{i}", Body=b"same bytes")
        assert store.record(s3_backends) == 4  # the bucket and three versions
        before = state_bytes(tmp_path)
        for _ in range(20):
            s3.get_object(Bucket="bkt", Key="k0")["Body"].read()
            s3.head_object(Bucket="bkt", Key="k1")
            s3.list_object_versions(Bucket="bkt")
        assert store.record(s3_backends) == 0
        assert state_bytes(tmp_path) == before
        assert len(list((tmp_path / "s3" / "blobs").iterdir())) == 1  # one content, stored once


def test_a_restore_gives_back_versions_ids_checksums_and_delete_markers(tmp_path):
    store = StateStore(tmp_path / "s3")
    with mock_aws():
        s3 = client()
        versioned_bucket(s3)
        first = s3.put_object(Bucket="bkt", Key="a/x", Body=b"one", ChecksumAlgorithm="SHA256")
        second = s3.put_object(Bucket="bkt", Key="a/x", Body=b"two", ChecksumAlgorithm="SHA256",
                               Metadata={"who": "me"})
        s3.put_object(Bucket="bkt", Key="gone", Body=b"g")
        s3.delete_object(Bucket="bkt", Key="gone")  # a delete marker on top
        store.record(s3_backends)
        store.compact()
        seen = s3.list_object_versions(Bucket="bkt")
    again = StateStore(tmp_path / "s3")
    again.load()
    with mock_aws():
        again.restore(s3_backends)
        s3 = client()
        restored = s3.list_object_versions(Bucket="bkt")
        for field in ("Versions", "DeleteMarkers"):
            assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in restored[field]] == [
                (v["Key"], v["VersionId"], v["IsLatest"]) for v in seen[field]]
        old = s3.get_object(Bucket="bkt", Key="a/x", VersionId=first["VersionId"],
                            ChecksumMode="ENABLED")
        assert old["Body"].read() == b"one"
        assert old["ChecksumSHA256"] == first["ChecksumSHA256"]
        new = s3.head_object(Bucket="bkt", Key="a/x")
        assert new["VersionId"] == second["VersionId"] and new["Metadata"] == {"who": "me"}
        assert s3.get_bucket_versioning(Bucket="bkt")["Status"] == "Enabled"


def test_a_torn_journal_line_and_a_kill_between_snapshot_and_truncation_lose_nothing(tmp_path):
    folder = tmp_path / "s3"
    store = StateStore(folder)
    with mock_aws():
        s3 = client()
        versioned_bucket(s3)
        s3.put_object(Bucket="bkt", Key="k", Body=b"1")
        store.record(s3_backends)
        journal = (folder / JOURNAL).read_bytes()
        store.compact()
        # As if killed after the new snapshot was renamed in, before the journal was emptied,
        # and in the middle of appending one more line.
        (folder / JOURNAL).write_bytes(journal + b'{"op":"put","rec')
        s3.put_object(Bucket="bkt", Key="k", Body=b"2")
        store.record(s3_backends)  # appends after the torn line: never written in practice
    reloaded = StateStore(folder)
    reloaded.load()
    assert [key for _, key, _ in reloaded.objects] == ["k"]  # the torn line and after: dropped
    assert reloaded.buckets.keys() == {"bkt"}


@pytest.mark.integration
def test_packages_survive_restarts_byte_for_byte_and_a_start_replays_no_history(tmp_path):
    import quilt3

    state, files = tmp_path / "registry", tmp_path / "files"
    files.mkdir()
    (files / "big.bin").write_bytes(os.urandom(9 * 2**20))  # above 8 MiB: a multipart upload
    tops, pinned = [], {}
    for run in range(2):
        with opened(EMBEDDED, state) as registry:
            (files / "small.txt").write_text(f"run {run}")
            package = quilt3.Package().set_dir("/", str(files)).set_meta({"run": run})
            tops.append(package.push("test/kept", registry=registry, force=True).top_hash)
            pinned[tops[-1]] = version_ids(registry, tops[-1])
    assert pinned[tops[0]]["big.bin"] and pinned[tops[0]] != pinned[tops[1]]
    sizes = []
    for restart in range(3):
        with opened(EMBEDDED, state) as registry:
            assert lines(state / "s3" / JOURNAL) == 0  # all history is in the snapshot
            sizes.append(state_bytes(state / "s3"))
            for run, top in enumerate(tops):
                package = quilt3.Package.browse("test/kept", registry=registry, top_hash=top)
                assert package.top_hash == top and package.meta == {"run": run}
                assert version_ids(registry, top) == pinned[top]
                dest = tmp_path / f"got-{restart}-{run}"
                quilt3.Package.install("test/kept", registry=registry, top_hash=top,
                                       dest=str(dest))
                assert (dest / "small.txt").read_text() == f"run {run}"
                assert (dest / "big.bin").read_bytes() == (files / "big.bin").read_bytes()
    assert sizes[0] == sizes[1] == sizes[2]  # reads and restarts add nothing
    # The 9 MiB file was pushed twice but is kept once.
    assert sizes[0] < 10 * 2**20


@pytest.mark.integration
@pytest.mark.parametrize("compact_after", [5, 1000])
def test_a_running_server_compacts_and_keeps_odd_keys_and_deletes(tmp_path, compact_after):
    log = tmp_path / "s3.log"

    def server(port: int) -> subprocess.Popen:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "flows.servers.s3server", "-p", str(port), "--state-dir",
                 str(tmp_path), "--compact-after", str(compact_after)], cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **TELEMETRY_OFF})
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 120, process)
        return process

    names = [f"dir {i}/ü+%2F?&=#{i}.txt" for i in range(12)]
    port = free_port()
    process = server(port)
    try:
        s3 = LocalS3(port=port).client()
        versioned_bucket(s3)
        written = {n: s3.put_object(Bucket="bkt", Key=n, Body=n.encode())["VersionId"]
                   for n in names}
        s3.delete_object(Bucket="bkt", Key=names[0], VersionId=written.pop(names[0]))
        s3.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": names[1]}]})  # a marker
        journal = lines(tmp_path / "s3" / JOURNAL)
        # Folded into the snapshot as it grew; else one line per change: the bucket twice,
        # 12 puts, 2 deletes.
        assert journal <= 6 if compact_after == 5 else journal == 16, journal
    finally:
        process.terminate()
        process.wait()
    process = server(port := free_port())
    try:
        s3 = LocalS3(port=port).client()
        listed = s3.list_object_versions(Bucket="bkt")
        assert {v["Key"]: v["VersionId"] for v in listed["Versions"]} == written
        assert [m["Key"] for m in listed["DeleteMarkers"]] == [names[1]]
        assert s3.get_object(Bucket="bkt", Key=names[5])["Body"].read() == names[5].encode()
    finally:
        process.terminate()
        process.wait()
    # The log does not grow with the traffic: no line per request.
    assert " HTTP/1.1\" " not in log.read_text(), log.read_text()[-500:]


def version_ids(registry: str, top: str) -> dict[str, str]:
    """The object version each file of a package version pins."""
    import quilt3

    package = quilt3.Package.browse("test/kept", registry=registry, top_hash=top)
    return {key: entry.physical_key.version_id for key, entry in package.walk()}


def record_the_old_way(log: Path, files: Path) -> str:
    """Publish a package to a server that keeps the old request log; return its top hash."""
    import quilt3

    port = free_port()
    env = {**os.environ, **TELEMETRY_OFF, "MOTO_ENABLE_RECORDING": "true",
           "MOTO_RECORDER_FILEPATH": str(log)}
    server = subprocess.Popen([sys.executable, "-m", "flows.servers.s3server", "-p", str(port)],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 60, server)
        s3 = LocalS3(port=port)
        s3.create_bucket(EMBEDDED_BUCKET)
        os.environ["AWS_ENDPOINT_URL"] = s3.endpoint_url
        package = quilt3.Package().set_dir("/", str(files)).set_meta({"old": True})
        top = package.push("test/old", registry=f"s3://{EMBEDDED_BUCKET}", force=True).top_hash
        quilt3.Package.browse("test/old", registry=f"s3://{EMBEDDED_BUCKET}")  # reads, logged
        return top
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        server.terminate()
        server.wait()


@pytest.mark.integration
def test_an_old_request_log_is_migrated_once_even_after_a_kill(tmp_path):
    import quilt3

    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("kept")
    state = tmp_path / "registry"
    state.mkdir()
    log = state / "s3-state.jsonl"
    top = record_the_old_way(log, files)
    logged = log.read_bytes()
    # A kill during an earlier migration left blobs and journal lines but no snapshot.
    (state / "s3" / "blobs").mkdir(parents=True)
    (state / "s3" / "blobs" / ("0" * 64)).write_bytes(b"half")
    (state / "s3" / JOURNAL).write_bytes(b'{"op":"bucket","name":"x","config":{}}\n{"op"')
    with opened(EMBEDDED, state) as registry:
        package = quilt3.Package.browse("test/old", registry=registry, top_hash=top)
        quilt3.Package.install("test/old", registry=registry, top_hash=top,
                               dest=str(tmp_path / "got"))
        assert package.meta == {"old": True}
    assert (tmp_path / "got" / "a.txt").read_text() == "kept"
    assert not log.exists() and (state / "s3-state.jsonl.migrated").read_bytes() == logged
    assert not (state / "s3" / "blobs" / ("0" * 64)).exists()
    # A kill after the snapshot was in place but before the old log was moved aside: the
    # snapshot wins, nothing is replayed twice.
    os.replace(state / "s3-state.jsonl.migrated", log)
    snapshot = (state / "s3" / SNAPSHOT).read_bytes()
    with opened(EMBEDDED, state) as registry:
        assert quilt3.Package.browse("test/old", registry=registry).top_hash == top
    assert (state / "s3" / SNAPSHOT).read_bytes() == snapshot
    assert not log.exists()


def doc_blocks() -> list[list[str]]:
    """The fenced blocks of docs/registry.md, as lists of lines."""
    parts = (ROOT / "docs" / "registry.md").read_text().split("```")
    return [block.split("\n", 1)[1].strip().splitlines() for block in parts[1::2]]


def test_the_embedded_bucket_without_an_endpoint_is_refused(monkeypatch, capsys):
    from flows.publishing import servable
    from flows.publishing.registries import RegistryError, check_registry
    from flows.run.shell import program

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.chdir(ROOT)  # the printed command names this python from here
    with pytest.raises(RegistryError, match=f"`{program('python')} -m flows registry`"):
        check_registry(f"s3://{EMBEDDED_BUCKET}")
    command, printed = next(b for b in doc_blocks() if "servable" in b[0])
    code = servable.main(command.split()[3:])
    assert code == 2 and capsys.readouterr().err.strip() == printed.replace(
        ".venv/bin/python", program("python"))


@pytest.mark.integration
def test_the_registry_command_serves_what_the_documented_lines_install(tmp_path):
    import quilt3

    workspace, port = tmp_path / "ws", free_port()
    files = tmp_path / "files"
    files.mkdir()
    (files / "model.keras").write_bytes(b"weights")
    state = workspace / "registry"
    with opened(EMBEDDED, state) as registry:
        package = quilt3.Package().set_dir("model/", str(files))
        first = package.push("openimager/classifier", registry=registry, force=True).top_hash
    command = next(b for b in doc_blocks() if "flows registry" in b[0])[0]
    assert command.startswith(".venv/bin/python ") and command.endswith(" --workspace workspace")
    command = command.replace(" workspace", f" {workspace}")
    # A new shell: the venv's programs are not on its PATH.
    venv = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ["PATH"].split(":") if p != venv)
    env = {**os.environ, "PATH": path}
    env.pop("AWS_ENDPOINT_URL", None)
    words = [sys.executable, *command.split()[1:]]
    server = subprocess.Popen([*words, "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().startswith(f"serving s3://{EMBEDDED_BUCKET} from")
        printed = [server.stdout.readline().rstrip("\n") for _ in range(7)]
        documented = next(b for b in doc_blocks() if b[0].startswith("export AWS_ENDPOINT"))
        # The programs as this test's python names them from the project's folder.
        here = os.path.relpath(venv, ROOT) if venv.startswith(f"{ROOT}/") else venv
        assert printed == [line.replace("9321", str(port)).replace("<top-hash>", first)
                           .replace(".venv/bin", here)
                           .replace("workspace/installed", f"{workspace}/installed")
                           for line in documented]
        # While it runs, --registry embedded on the same workspace goes to this server, and a
        # second server for it is refused in one line.
        with opened(EMBEDDED, state):
            assert os.environ["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        second = subprocess.run([*words, "--port", str(free_port())], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().endswith(f"already served at http://127.0.0.1:{port}")
        # Run as printed, in the folder the command ran in.
        run = subprocess.run(["bash", "-euc", "\n".join(printed)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        got = workspace / "installed" / "openimager_classifier" / "model" / "model.keras"
        assert got.read_bytes() == b"weights"
        server.terminate()  # SIGTERM: a clean stop
        assert server.wait(60) == 0
        assert not (state / "s3" / JOURNAL).read_bytes()  # nothing was written: no change
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()



def test_an_answer_from_another_server_on_the_port_is_not_taken_for_ours(tmp_path):
    from flows.servers.local import wait_own_http
    from flows.servers.mirror import StaticHTTP

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with StaticHTTP(tmp_path) as other, pytest.raises(TimeoutError):
            wait_own_http(f"{other.url}/moto-api/", 2, child)
    finally:
        child.kill()
        child.wait()
    with pytest.raises(RuntimeError, match="exited"):
        wait_own_http("http://127.0.0.1:9/moto-api/", 60, child)


def test_a_server_that_cannot_listen_says_so_and_records_no_endpoint(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "flows.servers.s3server", "-p", str(port),
                               "--state-dir", str(tmp_path / "registry")], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "registry" / "endpoint").exists()
