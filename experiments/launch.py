"""Run one experiment as several processes on this machine, joined by ``jax.distributed``.

    python -m experiments.launch --processes 2 --cpu-devices 2 -- python -m experiments.linear --quick

Starts ``--processes`` copies of the command, each told in its environment where the coordinator
listens (127.0.0.1 and a free port), how many processes there are and which one it is
(:mod:`ssm_gd.distributed`). An experiment that runs over several processes
(``experiments.linear``, ``experiments.lm`` without ``--sweep``) joins them; the others refuse.
Process 0's output is shown as it is; the others' lines are shown prefixed ``[process i]``.
If a process fails, the others are stopped (they would wait for it forever) and the launcher exits
with its status; ``--timeout`` bounds the whole run.

On several machines (a GPU cluster), start one process per machine with the three variables of
:mod:`ssm_gd.distributed` set by hand or by the job scheduler; ``--cpu-devices`` is for the CPU,
where each process otherwise sees one device.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from ssm_gd import distributed

#: Seconds between a polite stop (SIGINT) and SIGKILL. SIGINT, not SIGTERM: JAX's distributed
#: runtime catches SIGTERM (a preemption notice) and goes on running.
GRACE = 5.0


def parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="python -m experiments.launch [--processes N] [--cpu-devices K] [--port P] "
        "[--timeout S] -- COMMAND ...",  # fmt: skip
    )
    parser.add_argument("--processes", type=int, default=2, help="processes to start (default 2)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="CPU devices each process sees (JAX_NUM_CPU_DEVICES; default: "
                             "JAX's own, one)")  # fmt: skip
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="the coordinator's port on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds after which every process is stopped (default: none)",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        parser.error("the command to run follows '--' (e.g. -- python -m experiments.linear)")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]
    if not args.command:
        parser.error("no command after '--'")
    if args.processes < 1:
        parser.error(f"--processes must be a positive integer; got {args.processes}")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error(f"--cpu-devices must be a positive integer; got {args.cpu_devices}")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port must be in 1 … 65535; got {args.port}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds; got {args.timeout}")
    return args


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _relay(stream, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stderr.write(prefix + line.decode(errors="replace"))
        sys.stderr.flush()


def _stop(procs) -> None:
    """SIGINT to every process group still running, SIGKILL to those alive after :data:`GRACE`."""
    for sig, wait in ((signal.SIGINT, GRACE), (signal.SIGKILL, 0.0)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
    for p in procs:
        p.wait()


def launch(command, processes: int, *, cpu_devices=None, port=None, timeout=None) -> int:
    """Run ``command`` as ``processes`` processes; return the exit status (the first failing
    process's, 124 at ``timeout``, 0 when every process succeeded)."""
    address = f"127.0.0.1:{port or free_port()}"
    procs, relays = [], []
    start = time.monotonic()
    try:
        for i in range(processes):
            env = {**os.environ, distributed.COORDINATOR: address,
                   distributed.PROCESSES: str(processes), distributed.PROCESS_ID: str(i)}  # fmt: skip
            if cpu_devices is not None:
                env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
            quiet = i > 0  # process 0 speaks as itself; the others through a prefix
            p = subprocess.Popen(
                command, env=env, start_new_session=True,
                stdout=subprocess.PIPE if quiet else None,
                stderr=subprocess.STDOUT if quiet else None,
            )  # fmt: skip
            procs.append(p)
            if quiet:
                t = threading.Thread(target=_relay, args=(p.stdout, f"[process {i}] "), daemon=True)
                t.start()
                relays.append(t)
        while True:
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:
                i, code = failed[0]
                how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                       else f"exited with status {code}")  # fmt: skip
                print(f"launch: process {i} {how}; stopping the others", file=sys.stderr)
                return 128 - code if code < 0 else code  # a shell's status for a signal
            if all(p.returncode == 0 for p in procs):
                return 0
            if timeout is not None and time.monotonic() - start > timeout:
                print(f"launch: --timeout {timeout:g} s reached; stopping every process",
                      file=sys.stderr)  # fmt: skip
                return 124
            time.sleep(0.1)
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(procs)
        for t in relays:
            t.join(timeout=1.0)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # through launch's ``finally``: the processes are stopped


def main(argv=None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminated)
    return launch(args.command, args.processes, cpu_devices=args.cpu_devices, port=args.port,
                  timeout=args.timeout)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
