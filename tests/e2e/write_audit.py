"""``python tests/e2e/write_audit.py LOG -m MODULE ARGS…``: run ``MODULE`` as ``python -m`` would,
and record every path this process opens for writing, makes, renames or removes (Python's audit
events) in ``LOG.<process index>`` (``SSM_GD_PROCESS_ID``, 0 in a plain run), one per line, when it
exits. The multi-process test's witness of which process writes what."""

import atexit
import os
import runpy
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.mkdir", "os.remove", "os.rename", "os.replace", "os.rmdir", "os.truncate",
          "shutil.rmtree", "shutil.copyfile", "os.symlink", "os.link"}  # fmt: skip

log = f"{sys.argv[1]}.{os.environ.get('SSM_GD_PROCESS_ID', '0')}"
if sys.argv[2] != "-m" or len(sys.argv) < 4:
    sys.exit("usage: write_audit.py LOG -m MODULE [ARGS...]")
module, sys.argv = sys.argv[3], [sys.argv[3], *sys.argv[4:]]
written: list[str] = []
recording = True


def _path(value) -> str | None:
    if isinstance(value, int):  # a file descriptor: no path to name
        return None
    try:
        return os.path.abspath(os.fsdecode(value))
    except TypeError:
        return None


def hook(event, args):
    if not recording:
        return
    path = None
    if event == "open":
        target, mode, flags = (*args, None, None)[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS
        )
        path = _path(target) if writes else None
    elif event in EVENTS:
        path = _path(args[0])
    if path is not None:
        written.append(f"{event} {path}")


def _write_log():
    global recording
    recording = False
    with open(log, "w") as f:
        f.write("".join(line + "\n" for line in written))


atexit.register(_write_log)
sys.addaudithook(hook)
runpy.run_module(module, run_name="__main__", alter_sys=True)
