"""Ray start / join and storage, once for the sweep and the Ray Train job.

:func:`init_ray` starts an embedded local Ray (every service on 127.0.0.1, :func:`loopback_node`; the dashboard on
``dashboard_host``, 127.0.0.1 unless asked; token auth as Ray sets it up) or joins ``address`` / ``RAY_ADDRESS``,
shipping the project's packages as ``runtime_env`` py_modules (:func:`package_dirs`).  :func:`filesystem`,
:func:`exists`, :func:`write_text`, :func:`read_text` and :func:`copy_dir` reach a local folder or any URI Ray's storage accepts (pyarrow filesystems).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterator, Optional, Protocol

import torch

from istanas.checkpoint import atomic_write_text
from istanas.cli import existing_ancestor_file
from istanas.config import ConfigError

from .claim import NAMESPACE
from .sweep_config import is_storage_uri

PACKAGES = ("istanas", "spaces", "orchestrator")


class RayConfig(Protocol):
    """The fields :func:`init_ray` reads (``SweepConfig`` and ``DistSearchConfig`` have them)."""

    name: str
    address: Optional[str]
    num_cpus: Optional[int]
    num_gpus: Optional[int]
    dashboard: bool
    dashboard_host: str
    dashboard_port: int


# ------------------------------------------------------------------------------------------------- preflight
_HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                      r"[A-Za-z0-9])?)*$")


def check_host(host: Any, field: str = "dashboard_host") -> None:
    """``ConfigError`` unless ``host`` is an IP address or an RFC 1123 host name."""
    if isinstance(host, str):
        try:
            ipaddress.ip_address(host)
            return
        except ValueError:
            if _HOST_RE.match(host) and not host.replace(".", "").isdigit():
                return
    raise ConfigError(f"{field}: {host!r} is neither an IP address nor a host name (e.g. 127.0.0.1, or 0.0.0.0 "
                      f"to expose it)")


def local_resources(cfg: "RayConfig") -> tuple[float, float]:
    """(CPUs, GPUs) the embedded local Ray of ``cfg`` will have: ``num_cpus`` / ``num_gpus``, else the machine's."""
    cpus = cfg.num_cpus if cfg.num_cpus is not None else (os.cpu_count() or 1)
    gpus = cfg.num_gpus if cfg.num_gpus is not None else (torch.cuda.device_count() if torch.cuda.is_available()
                                                          else 0)
    return float(cpus), float(gpus)


def preflight(cfg: "RayConfig", demands: dict[str, tuple[float, float]], *, storage_path: Optional[str] = None,
              seed: Optional[int] = None) -> None:
    """What the machine decides, checked before Ray starts (``ConfigError`` naming the field): the dashboard host,
    ``seed`` in [0, 2**32), a local ``storage_path`` that is not (under) a file, and every ``demands`` entry
    (``field -> (CPUs, GPUs)`` one trial / worker asks for) within what the embedded local Ray will have.  With an
    ``address`` (or ``RAY_ADDRESS``) a cluster may grow: a demand beyond the nodes seen now is only a warning."""
    check_host(cfg.dashboard_host)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if storage_path is not None and not is_storage_uri(storage_path):
        local = storage_path[len("file://"):] if storage_path.startswith("file://") else storage_path
        bad = existing_ancestor_file(local)
        if bad is not None:
            raise ConfigError(f"storage_path: {storage_path} " + ("is a file" if os.path.abspath(
                os.path.expanduser(local)) == bad else f"lies under the file {bad}") + "; give a folder or a URI")
    if cluster_address(cfg):
        return
    cpus, gpus = local_resources(cfg)
    for field, (cpu, gpu) in demands.items():
        if cpu > cpus or gpu > gpus:
            what = f"{cpu:g} CPUs" if cpu > cpus else f"{gpu:g} GPUs"
            raise ConfigError(f"{field}: a trial asks for {what}, but the embedded local Ray has {cpus:g} CPUs and "
                              f"{gpus:g} GPUs (num_cpus / num_gpus, else this machine); it could never start. Lower "
                              f"it, or give --address of a cluster that has them")


def warn_unplaceable(demands: dict[str, tuple[float, float]]) -> None:
    """On a running cluster: a warning for each demand no live node can hold now (an autoscaler may add one)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for field, (cpu, gpu) in demands.items():
        if not any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
            print(f"warning: {field}: no node of the cluster has {cpu:g} CPUs and {gpu:g} GPUs now; trials wait "
                  f"until the autoscaler adds one", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------- ray
def package_dirs() -> list[str]:
    """The project's package folders, shipped to a cluster's workers as ``runtime_env`` py_modules."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(root, p) for p in PACKAGES if os.path.isdir(os.path.join(root, p))]


def cluster_address(cfg: RayConfig) -> Optional[str]:
    """``cfg.address``, else ``RAY_ADDRESS``, else None (an embedded local Ray)."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


#: Ray 2.60's switch for a single-machine Ray (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``): off, the node IP
#: is 127.0.0.1 and every service of the node (gcs_server, raylet, workers, agents, Prometheus metrics) binds it
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Around ``ray.init`` of an embedded local Ray: the node on 127.0.0.1.  Ray 2.60 turns a 127.0.0.1 node IP
    into the machine's address (``resolve_ip_for_localhost``) unless ``ENABLE_RAY_CLUSTER`` is off (its default on
    macOS / Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` elsewhere): set for the processes ``ray.init`` starts
    (they inherit the environment) and for this one (an imported Ray read it at import), then restored, so a later
    ``ray.init(address=...)`` of a cluster in this process is unaffected.  A user's own setting of the variable is
    left alone."""
    import ray._private.ray_constants as rc

    if LOCAL_ONLY_ENV in os.environ:
        yield
        return
    saved = rc.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    rc.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        rc.ENABLE_RAY_CLUSTER = saved
        os.environ.pop(LOCAL_ONLY_ENV, None)


def init_ray(cfg: RayConfig, *, echo: bool = True, tag: str = "istanas", dashboard_note: str = "") -> bool:
    """Start an embedded local Ray or join the cluster of ``cfg``; True when this call started (and so should shut
    down) Ray.  An initialised Ray is used as is.  ``tag`` prefixes the printed lines (``[tag name]``);
    ``dashboard_note`` is added to the dashboard line."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(cfg)
    if address:
        ctx = ray.init(address=address, namespace=NAMESPACE, log_to_driver=True,
                       runtime_env={"py_modules": package_dirs(), "env_vars": {"PYTHONUNBUFFERED": "1"}})
    else:
        with loopback_node():
            ctx = ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                           include_dashboard=cfg.dashboard, dashboard_host=cfg.dashboard_host,
                           dashboard_port=cfg.dashboard_port, namespace=NAMESPACE, log_to_driver=True)
    if echo:
        res = ray.cluster_resources()
        where = f"cluster at {address}" if address else "local Ray"
        print(f"[{tag} {cfg.name}] {where}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs", flush=True)
        url = getattr(ctx, "dashboard_url", None)
        if url:
            print(f"[{tag} {cfg.name}] Ray dashboard: http://{url} (token auth is on: `ray get-auth-token` prints "
                  f"the token it asks for){dashboard_note}", flush=True)
    return True


# --------------------------------------------------------------------------------------------------- storage
def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` of a URI or local path."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    """Whether ``uri`` (a storage URI) names an existing file or folder."""
    import pyarrow.fs as pafs

    fs, p = filesystem(uri)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write_text(path: str, text: str) -> None:
    """Write ``text`` to a local path (atomically) or a storage URI."""
    if is_storage_uri(path):
        fs, p = filesystem(path)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        return
    atomic_write_text(path, text)


def read_text(path: str) -> Optional[str]:
    """The text of a local path or storage URI, or None when there is none."""
    if is_storage_uri(path):
        fs, p = filesystem(path)
        try:
            with fs.open_input_stream(p) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def copy_dir(src: str, dest: str) -> str:
    """Copy folder ``src`` to ``dest``: a URI with pyarrow, a local folder into a temporary sibling renamed into
    place (a ``file://`` prefix is dropped).  Returns ``dest``."""
    if is_storage_uri(dest):
        import pyarrow.fs as pafs

        fs, p = filesystem(dest)
        fs.create_dir(p, recursive=True)
        pafs.copy_files(src, p, destination_filesystem=fs)
        return dest
    local = dest[len("file://"):] if dest.startswith("file://") else dest
    parent = os.path.dirname(os.path.abspath(local))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-copy-")
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if os.path.isdir(local):
            shutil.rmtree(local)
        os.replace(tmp, local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


__all__ = ["init_ray", "loopback_node", "LOCAL_ONLY_ENV", "preflight", "check_host", "local_resources", "warn_unplaceable", "package_dirs", "cluster_address", "filesystem", "exists", "write_text", "read_text",
           "copy_dir", "NAMESPACE", "RayConfig"]
