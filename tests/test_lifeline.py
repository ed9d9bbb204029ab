"""Every process a run starts ends with it, kill -9 included; Prefect's startup timeout."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flows.servers.lifeline import descendants, processes

ROOT = Path(__file__).resolve().parent.parent
TEST_MARK = "OPENIMAGER_TEST_LIFELINE"  # beside the run's own mark: what this test started
SETTLE = 5.0  # seconds a killed run's processes get to go


def left_behind(tree: dict[int, int], mark: str) -> list[str]:
    """The processes of tree still running, and any other process carrying mark."""
    table = processes()
    pids = {pid for pid, started in tree.items() if pid in table and table[pid][2] == started}
    for pid in table:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{TEST_MARK}={mark}".encode() in environ:
            pids.add(pid)
    pids.discard(os.getpid())
    found = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError):
            found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
    return found


def kill_and_check(process: subprocess.Popen, mark: str) -> None:
    """SIGKILL process; nothing it started may run SETTLE seconds later."""
    tree = descendants(process.pid, processes())
    assert tree, "the run had started no process yet"
    process.kill()
    process.wait()
    killed = time.monotonic()
    while (remaining := left_behind(tree, mark)) and time.monotonic() < killed + SETTLE:
        time.sleep(0.2)
    assert remaining == [], f"still running {SETTLE:.0f} s after kill -9: {remaining}"
    print(f"{len(tree)} processes gone {time.monotonic() - killed:.1f} s after kill -9 ({mark})")


def start_python(code: str, mark: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            env={**os.environ, TEST_MARK: mark, **env},
                            stdout=subprocess.PIPE, text=True)


SERVERS = textwrap.dedent("""
    import os, subprocess, sys, time
    from flows.servers.local import LocalS3
    from flows.servers import lifeline
    s3 = LocalS3().start()
    # a grandchild, as bentoml's workers are
    lifeline.popen([sys.executable, "-c",
                    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                    "'import time; time.sleep(600)']); time.sleep(600)"])
    # started by someone else's code, without the run's mark in its environment
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                     env={"PATH": os.environ["PATH"]})
    time.sleep(3)  # the watchdog's next look at the process table
    print("ready", flush=True)
""")


def test_kill_9_takes_every_server_and_child_along():
    run = start_python(SERVERS + "time.sleep(600)\n", "kill9")
    assert run.stdout.readline().strip() == "ready"
    names = [Path(f"/proc/{pid}/cmdline").read_bytes()
             for pid in descendants(run.pid, processes())]
    assert any(b"s3server" in name for name in names)
    kill_and_check(run, "kill9")


def test_a_run_that_forgets_to_stop_its_servers_stops_them_on_exit():
    run = start_python(SERVERS + "os._exit(0)\n", "exit")
    assert run.stdout.readline().strip() == "ready"
    tree = descendants(run.pid, processes())
    run.wait()
    deadline = time.monotonic() + SETTLE
    while (remaining := left_behind(tree, "exit")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert remaining == []


PREFECT_TIMEOUT = """
    from flows.run.runtime import use_prefect_defaults
    use_prefect_defaults()
    import threading
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout
    seen = []
    thread = threading.Thread(target=lambda: seen.append(timeout.value()))
    thread.start(); thread.join()
    print(timeout.value(), seen[0])
"""


@pytest.mark.parametrize("setup, expected", [
    ({}, "600 600"),
    ({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7"}, "7 7"),
    ({"profile": "33"}, "33 33"),
    ({"toml": "44"}, "44 44"),
    ({"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "20 20"),  # no ephemeral server then
])
def test_prefect_gets_time_to_start_unless_the_user_chose(tmp_path, setup, expected):
    setup = dict(setup)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    if "profile" in setup:  # as docs/operations.md shows
        subprocess.run([str(Path(sys.executable).parent / "prefect"), "config", "set",
                        f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={setup.pop('profile')}"],
                       env=env, check=True, capture_output=True, timeout=300)
    if "toml" in setup:
        (tmp_path / "prefect.toml").write_text(
            f"[server.ephemeral]\nstartup_timeout_seconds = {setup.pop('toml')}\n")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PREFECT_TIMEOUT)], cwd=tmp_path,
                          env={**env, **setup, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == expected


class Demo:
    """`python -m flows demo` in a child process, its output collected as it comes."""

    def __init__(self, args: list[str], mark: str, prefect_home: Path, **env: str):
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        # What a kill -9 leaves of the servers' temporary files (bentoml serve's socket
        # folder) goes with the test's folder.
        scratch = prefect_home.parent / f"tmp-{mark}"
        scratch.mkdir(parents=True, exist_ok=True)
        env = {"TMPDIR": str(scratch), **env}
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows", "demo", "--epochs", "1", *args], cwd=ROOT,
            env={**clean, TEST_MARK: mark, "PREFECT_HOME": str(prefect_home), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def running(self, *parts: str) -> bool:
        """Whether a process with each of parts in its command line runs under the demo."""
        found = []
        for pid in descendants(self.process.pid, processes()):
            with contextlib.suppress(OSError):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " "))
        return all(any(part in cmd for cmd in found) for part in parts)

    def wait_for(self, what: str, ready) -> None:
        """Wait until ready() holds; fail with the output if the demo ends first."""
        deadline = time.monotonic() + 1800  # a hung demo, not a slow one
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo never got to {what}:\n{''.join(self.lines)[-4000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_of_the_demo_leaves_nothing_behind(demo_workspace, tmp_path):
    # OPENIMAGER_WORKSPACE chooses the demo's workspace when --workspace is not given.
    demo = Demo([], "refresh", tmp_path / "prefect-1", OPENIMAGER_WORKSPACE=str(demo_workspace))
    demo.wait_for("its refresh with the servers up", lambda: (
        (demo_workspace / "metadata").exists() and demo.running("s3server", "uvicorn")))
    assert not (demo_workspace / "dataset").exists()
    kill_and_check(demo.process, "refresh")

    demo = Demo(["--workspace", str(demo_workspace)], "train", tmp_path / "prefect-2")
    # Keras' TensorBoard callback makes its run's folder when training begins.
    demo.wait_for("training", lambda: any((demo_workspace / "model" / "logs").glob("*")))
    assert not (demo_workspace / "model" / "model.keras").exists()
    kill_and_check(demo.process, "train")


@pytest.mark.integration
@pytest.mark.slow
def test_the_demo_runs_to_the_end_on_a_loaded_machine_then_dies_whole(demo_workspace, tmp_path):
    # Two busy loops per core: Prefect's first start on a fresh database then takes longer
    # than the 20 s it waits by default. Only that start is at stake: the loops stop once the
    # flow has begun (Prefect's API answered), as they would only slow the rest.
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        demo = Demo(["--workspace", str(demo_workspace)], "serve", tmp_path / "prefect")
        demo.wait_for("the start of its flow", lambda: any(
            "Beginning flow run" in line for line in demo.lines))
    finally:
        for busy in load:
            busy.kill()
            busy.wait()
    # bentoml serve starts only after the retrain flow returned
    demo.wait_for("the end of its flow", lambda: demo.running("bentoml serve"))
    assert any("published" in line for line in demo.lines)
    demo.wait_for("serving", lambda: demo.running("_bentoml_impl.worker.service"))
    kill_and_check(demo.process, "serve")
