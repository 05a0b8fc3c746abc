"""`make cluster`: the production topology on this machine (simulators/stage/topology.py).

    python -m simulators.stage.cluster up [--dir .ofd-cluster]     start it and stay in front;
                                                                   Ctrl-C or SIGTERM stops it
    python -m simulators.stage.cluster down [--dir .ofd-cluster]   stop one left running, and
                                                                   remove what a killed one left

`up` prints where everything is (devices, gateways' control APIs and keys, Kafka, PostgreSQL) as
one JSON object and writes it to DIR/cluster.json with its own pid. Needs root (network
namespaces) and what `.ci/run` installs (PostgreSQL, HAProxy, Mosquitto, Java and Maven).
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from simulators.stage.processes import unwind_on_sigterm
from simulators.stage.topology import Topology, TopologySettings, describe

DEFAULT_DIR = Path(".ofd-cluster")
STATE = "cluster.json"
DOWN_TIMEOUT = 60.0


def up(directory: Path, settings: TopologySettings) -> int:
    if os.geteuid() != 0:
        print("error: make cluster needs root (it makes network namespaces)", file=sys.stderr)
        return 1
    directory = directory.resolve()
    topology = Topology(directory, settings)
    unwind_on_sigterm()
    try:
        topology.start()
        where = {"pid": os.getpid(), **describe(topology)}
        (directory / STATE).write_text(json.dumps(where, indent=2) + "\n")
        print(json.dumps(where, indent=2), flush=True)
        print("cluster up; Ctrl-C (or make cluster-down) stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        topology.stop()
        with contextlib.suppress(FileNotFoundError):
            (directory / STATE).unlink()
        print("cluster down", flush=True)
    return 0


def down(directory: Path, settings: TopologySettings) -> int:
    state = directory / STATE
    if state.exists():
        pid = int(json.loads(state.read_text())["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + DOWN_TIMEOUT
            while time.monotonic() < deadline:
                os.kill(pid, 0)  # ProcessLookupError once it is gone
                time.sleep(0.2)
    # Whatever a killed `up` left: its namespaces and bridge (its children die with it).
    Topology(directory, settings).net.down()
    print("cluster down", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.stage.cluster")
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where it keeps its data")
    parser.add_argument("--gateways", type=int, default=2, help="gateways behind the balancer")
    args = parser.parse_args(argv)
    settings = TopologySettings(gateways=args.gateways, tag="mc", octet=78)
    if args.action == "up":
        return up(args.dir, settings)
    return down(args.dir, settings)


if __name__ == "__main__":
    sys.exit(main())
