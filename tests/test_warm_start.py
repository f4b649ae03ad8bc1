"""The first wave's gate (orchestrator.warm_start): no caller passes before ``expected`` arrived or the deadline."""
import threading
import time

import pytest

from orchestrator import warm_start


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="istanas")
    yield ray
    ray.shutdown()


def _wait_gone(ray, name: str, deadline_s: float = 60.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            ray.get_actor(name, namespace=warm_start.NAMESPACE)
        except ValueError:
            return True
        time.sleep(0.05)
    return False


def test_gate_holds_every_caller_until_the_last_expected_one_arrives(ray_local):
    ray = ray_local
    gate = warm_start.open_gate("g3", expected=3, timeout_s=300)
    first = [gate.arrive.remote() for _ in range(2)]
    ready, _ = ray.wait(first, num_returns=1, timeout=2.0)
    assert ready == []                                    # two of three: nobody passes
    last = gate.arrive.remote()
    counts = ray.get(first + [last], timeout=120)
    assert counts == [3, 3, 3]
    # open, it lets a later worker (a restarted trial, a node that joined) through at once, until the sweep ends
    assert ray.get(gate.arrive.remote(), timeout=120) == 4
    warm_start.close_gate(gate)
    assert _wait_gone(ray, warm_start.gate_name("g3"))


def test_gate_opens_at_its_deadline_for_the_workers_that_came(ray_local):
    ray = ray_local
    t0 = time.monotonic()
    gate = warm_start.open_gate("g-late", expected=4, timeout_s=1.5)
    counts = ray.get([gate.arrive.remote() for _ in range(2)], timeout=120)
    assert counts == [2, 2] and time.monotonic() - t0 >= 1.0   # held to the deadline, then let through
    warm_start.close_gate(gate)
    assert _wait_gone(ray, warm_start.gate_name("g-late"))


def test_no_gate_for_two_slots_or_no_timeout_and_a_worker_without_gate_runs_at_once(ray_local, monkeypatch):
    assert warm_start.open_gate("g2", expected=2, timeout_s=60) is None
    assert warm_start.open_gate("g0", expected=8, timeout_s=0) is None
    monkeypatch.setattr(warm_start, "_ARRIVED", False)
    assert warm_start.pass_gate("nonexistent-sweep") is None
    # a process passes the gate once: its later trials do not look for it
    gate = warm_start.open_gate("g-once", expected=3, timeout_s=300)
    monkeypatch.setattr(warm_start, "_ARRIVED", True)
    assert warm_start.pass_gate("g-once") is None
    assert ray_local.get(gate.arrived.remote(), timeout=60) == 0
    monkeypatch.setattr(warm_start, "_ARRIVED", False)
    passed = []
    th = threading.Thread(target=lambda: passed.append(warm_start.pass_gate("g-once")), daemon=True)
    th.start()
    end = time.monotonic() + 60
    while ray_local.get(gate.arrived.remote(), timeout=60) < 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert ray_local.get(gate.arrived.remote(), timeout=60) == 1 and passed == []   # counted in, still held
    warm_start.close_gate(gate)                          # the driver's finally: the held worker runs at once
    th.join(timeout=60)
    assert passed == [None] and _wait_gone(ray_local, warm_start.gate_name("g-once"))
