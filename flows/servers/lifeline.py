"""Every process a run starts ends with the run, kill -9 included.

The first server a process starts also starts its watchdog: a small process of its own
session (so Ctrl-C and a terminal's hangup leave it to finish its job) that waits for the
run's process to end, however it ends, then stops what the run left behind:

- every process carrying the run's mark in its environment (children started here get it,
  and their own children, such as bentoml's workers or Prefect's server, inherit it);
- every descendant of the run it saw in its last look at the process table (once a second),
  which also covers children started before the watchdog or without the mark.

PR_SET_PDEATHSIG is not used: it fires when the spawning *thread* ends, and Prefect starts
servers from task threads that end long before the run.

The watchdog imports only the standard library, so it starts in a few milliseconds:
    python -I flows/servers/lifeline.py PID MARK
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

MARK = "OPENIMAGER_LIFELINE"  # in the environment of every process a run starts
GRACE = 2.0  # seconds between SIGTERM and SIGKILL of what a dead run left behind
LOOK_EVERY = 1.0  # seconds between two looks at the run's descendants (~0.5 % of a core)

_lock = threading.Lock()
_installed: dict[int, str] = {}  # pid of the run -> its mark (a forked child installs anew)


def install() -> str:
    """Start this process's watchdog unless it runs; return the mark of its children."""
    with _lock:
        pid = os.getpid()
        if pid not in _installed:
            mark = f"{pid}-{uuid.uuid4().hex[:12]}"
            env = {k: v for k, v in os.environ.items() if k != MARK}
            if Path("/proc/self/stat").exists():  # Linux: elsewhere servers stop only on exit
                subprocess.Popen(
                    [sys.executable, "-I", str(Path(__file__).resolve()), str(pid), mark],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    start_new_session=True, env=env)
            _installed[pid] = mark
            # Processes that others start from here (Prefect's server) inherit the mark too.
            os.environ[MARK] = mark
        return _installed[pid]


def popen(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """subprocess.Popen, for a process that must end with this one."""
    mark = install()
    return subprocess.Popen(args, env={**(os.environ if env is None else env), MARK: mark},
                            **kwargs)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """Parent pid, state and start time of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def processes() -> dict[int, tuple[int, str, int]]:
    """Every live process: pid -> (parent pid, state, start time)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] != "Z":
            table[int(entry.name)] = stat
    return table


def descendants(root: int, table: dict[int, tuple[int, str, int]]) -> dict[int, int]:
    """The descendants of root in table: pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][2]
        todo += children.get(pid, [])
    return found


def marked(mark: str, table: dict[int, tuple[int, str, int]]) -> dict[int, int]:
    """The processes whose environment carries mark: pid -> start time."""
    needle = f"{MARK}={mark}".encode()
    found = {}
    for pid, (_, _, started) in table.items():
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found[pid] = started
        except OSError:  # gone, or another user's
            pass
    return found


def alive(seen: dict[int, int], table: dict[int, tuple[int, str, int]]) -> dict[int, int]:
    """The processes of seen still running (the same start time: not a reused pid)."""
    return {pid: t for pid, t in seen.items() if pid in table and table[pid][2] == t}


def _is_watchdog(pid: int) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.endswith(b"/flows/servers/lifeline.py") for arg in args)


def _left_behind(mark: str, seen: dict[int, int]) -> dict[int, int]:
    table = processes()
    found = alive(seen, table)
    found.update(marked(mark, table))
    for pid in list(found):
        found.update(descendants(pid, table))
    # Another run's watchdog (a nested `python -m flows`) sweeps its own run, then ends.
    return {pid: t for pid, t in found.items() if pid != os.getpid() and not _is_watchdog(pid)}


def _signal_all(targets: dict[int, int], signum: int) -> None:
    for pid in targets:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signum)


def sweep(mark: str, seen: dict[int, int]) -> None:
    """Stop what a run left behind: SIGTERM, then SIGKILL after GRACE, until none is left."""
    for _ in range(5):  # bentoml's arbiter may restart a worker while it stops
        targets = _left_behind(mark, seen)
        if not targets:
            return
        _signal_all(targets, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and _left_behind(mark, targets):
            time.sleep(0.1)
        _signal_all(_left_behind(mark, targets), signal.SIGKILL)
        seen = targets


def watch(run: int, mark: str) -> None:
    """Wait until process run ends, looking at its descendants meanwhile; then sweep."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        ended: int | None = os.pidfd_open(run)
    except OSError:  # gone already, or a kernel before 5.3: the parent pid tells
        ended = None
    seen: dict[int, int] = {}
    while os.getppid() == run:
        table = processes()
        seen = alive(seen, table)  # an orphaned grandchild stays on the list
        seen.update(descendants(run, table))
        if ended is None:
            time.sleep(LOOK_EVERY)
        elif select.select([ended], [], [], LOOK_EVERY)[0]:
            break
    sweep(mark, seen)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
