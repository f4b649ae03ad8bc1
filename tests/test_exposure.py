"""Exposure settings: cluster.yaml starts every Ray node with token authentication and ships the token; the
embedded local Ray listens on loopback only."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from orchestrator.cluster import LOCAL_ONLY_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cluster_yaml_turns_token_auth_on_for_head_and_workers():
    with open(os.path.join(REPO, "cluster.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c.split("ray start")[0] for c in starts), key
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])  # drivers on the nodes too
    head = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head


# ------------------------------------------------------------------------------------- the embedded local Ray
_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from orchestrator.cluster import init_ray
from orchestrator.sweep_config import SweepConfig
cfg = SweepConfig()                         # the default local sweep: embedded Ray, dashboard on
init_ray(cfg, echo=False)
import ray

@ray.remote
class Probe:
    def ping(self):
        return 1

@ray.remote
def task():
    return 1

actor = Probe.remote()
assert ray.get([task.remote(), actor.ping.remote()]) == [1, 1]   # a worker and an actor are up too
node = ray.nodes()[0]
print(json.dumps({"pid": os.getpid(), "node_ip": node["NodeManagerAddress"],
                  "metrics_port": node["MetricsExportPort"], "gcs": ray.get_runtime_context().gcs_address,
                  "dashboard": ray._private.worker.get_dashboard_url()}), flush=True)
sys.stdin.read()                            # until the test closes stdin
ray.shutdown()
"""


def _listening() -> dict[int, list[tuple[str, int]]]:
    """Listening TCP sockets (IPv4 and IPv6) by inode: ``{inode: [(address, port)]}``, from /proc/net."""
    out: dict[int, list[tuple[str, int]]] = {}
    for fam, path in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        try:
            with open(path, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":                       # TCP_LISTEN
                continue
            ip_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(ip_hex)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))   # per 32-bit word, host order
            out.setdefault(int(cols[9]), []).append((socket.inet_ntop(fam, raw), int(port_hex, 16)))
    return out


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def _sockets_of(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every listening socket the processes ``pids`` hold."""
    inode_pid: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode_pid[int(link[8:-1])] = pid
    return [(addr, port, inode_pid[inode]) for inode, socks in _listening().items() if inode in inode_pid
            for addr, port in socks]


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile("/proc/net/tcp"), reason="reads /proc/net (Linux)")
def test_default_local_ray_listens_on_loopback_only():
    """The Ray the default local sweep starts (orchestrator.cluster.init_ray, in a fresh interpreter, with a task
    and an actor running): every listening socket of it and of its processes (gcs_server, raylet, workers,
    dashboard, dashboard / runtime-env agents, Prometheus metrics) is on a loopback address; the dashboard refuses a
    request without the session's token."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", LOCAL_ONLY_ENV)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, REPO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()                # blocks until the child's Ray is up (or it died)
        assert line, f"the child exited with {proc.wait()}"
        info = json.loads(line)
        assert _loopback(info["node_ip"]) and _loopback(info["gcs"].rsplit(":", 1)[0])
        deadline = time.monotonic() + 300
        while True:    # the agents start after ray.init returns: wait until the metrics port is served
            socks = _sockets_of(_descendants(info["pid"]))
            if any(port == info["metrics_port"] for _, port, _ in socks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert any(port == info["metrics_port"] for _, port, _ in socks), socks
        kinds = {open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
                 for _, _, pid in socks}
        assert any("gcs_server" in k for k in kinds) and any("raylet" in k for k in kinds), kinds
        exposed = [(a, p, pid) for a, p, pid in socks if not _loopback(a)]
        assert not exposed, f"listening on non-loopback addresses: {exposed}"
        # the dashboard: no token, no answer
        host, port = info["dashboard"].rsplit(":", 1)
        assert _loopback(host) and any(p == int(port) for _, p, _ in socks)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{info['dashboard']}/api/version", timeout=60)
        assert refused.value.code in (401, 403)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
