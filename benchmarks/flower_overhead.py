"""What Flower's simulation engine costs per message, with phones that do nothing.

A ServerApp sends one ``query`` message to every node and waits for the replies, twice (the first pass
also starts the workers and makes each node's context); the ClientApp answers at once. The time of the
second pass over the node count is the engine's own cost per message, which the fleet pays on top of the
phones' work. Flower 1.42's in-memory link state is polled once per node for every delivery, so the cost
per message grows with the number of nodes: this is why ``veil simulate`` hosts a cell of phones per
node above ``AUTO_NODES`` phones. Each size runs in its own process; the ratio is against the smallest.

    .venv/bin/python benchmarks/flower_overhead.py --nodes 100 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from fleet_runs import emit


def _one(nodes: int, concurrency: int) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.query("noop")
    def _answer(msg: Message, _context: object) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"phones": 1})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def _main(grid: object, _context: object) -> None:
        while len(list(grid.get_node_ids())) < nodes:  # type: ignore[attr-defined]
            time.sleep(0.1)
        ids = sorted(grid.get_node_ids())  # type: ignore[attr-defined]
        seconds = []
        for _ in range(2):
            messages = [
                Message(
                    RecordDict({"order": ConfigRecord({"round": 1})}),
                    dst_node_id=i,
                    message_type="query.noop",
                )
                for i in ids
            ]
            t = time.perf_counter()
            replies = list(grid.send_and_receive(messages, timeout=3600))  # type: ignore[attr-defined]
            seconds.append(time.perf_counter() - t)
            if len(replies) != nodes:
                raise SystemExit(f"{len(replies)} replies from {nodes} nodes")
        print(
            json.dumps({"nodes": nodes, "first_pass_s": round(seconds[0], 2), "pass_s": round(seconds[1], 2)})
        )

    cpus = os.cpu_count() or 1
    run_simulation(
        server, client, num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": cpus / concurrency, "num_gpus": 0.0}},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", help="append each size's row here (JSON lines)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args.one, args.concurrency)
        return
    rows: list[dict] = []
    for nodes in args.nodes:
        cmd = [sys.executable, __file__, "--one", str(nodes), "--concurrency", str(args.concurrency)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
        row["ms_per_message"] = round(1000 * row["pass_s"] / nodes, 2)
        row["per_message_vs_smallest"] = round(
            row["ms_per_message"] / (rows or [row])[0]["ms_per_message"], 2
        )
        rows.append(row)
        emit(row, args.out)


if __name__ == "__main__":
    main()
