"""Paper Eq. 12: fold the architecture coefficients of a super-net's support into BatchNorm, and export the result.

In the one-stage super-net every candidate op ends in an affine BN, and node i of a cell computes

    x_i = sum_{k in S_i} c_k o_k(x),   o_k(x) = gamma_k * xhat_k + beta_k   (xhat_k: the op's normalised output)

with c = b^T A_S - z_S^T E_SS (Eq. 11).  So c_k o_k(x) = (c_k gamma_k) xhat_k + (c_k beta_k): scaling the BN's
affine parameters,

    gamma_hat = c o gamma,   beta_hat = c o beta                                                       (Eq. 12)

gives an op whose output already carries its coefficient, in training and in eval mode alike (the running
statistics do not change; drop-path, a per-sample mask, commutes with the scale).  The result is the plain
stand-alone network of the genotype (``spaces.networks.build_network(..., bn_after_param_free=True)``) with every
trained weight and no architecture variables.

:func:`support_network` does the same for any :class:`istanas.supernet.SparseSuperNet` and support, also the
two-stage (Algorithm 1) super-net, whose BNs are ``affine=False`` (gamma = 1, beta = 0 implicitly) and whose
stride-1 skip has no BN: there the stand-alone BN gets gamma = c, beta = 0 (the running statistics copied), the
cell pre-processing BNs gamma = 1, beta = 0, and the BN that ``bn_after_param_free`` appends to a stride-1 skip is
set to the identity in eval mode (running mean 0, var 1, gamma = c * sqrt(1 + eps), beta = 0).  In eval mode
(BN on running statistics) the stand-alone network then computes exactly the super-net's forward on that
support; in training mode only where every folded BN existed in the super-net (one-stage).

Module mapping (super-net -> stand-alone, :mod:`spaces.networks` layout):

* ``stem.*`` -> ``stem.*`` (CIFAR stem) or ``stem0.* / stem1.*`` -> same (ImageNet stem);
  ``cells.{c}.preprocess0/1.*`` -> same (FactorizedReduce after a reduction cell, else ReLUConvBN 1x1);
  ``classifier.*`` -> same; ``aux_head.*`` -> ``auxiliary_head.*`` (both are :class:`spaces.networks.AuxiliaryHead`).
* ``cells.{c}.edges.{e}.{k}.*`` -> ``cells.{c}.ops.{j}.*`` for genotype pair j = (op name, input) of node
  i = j // s, with e = edge_offsets[i] + input and k = the op's index among the 7 candidates.  The one-stage
  candidate ops and the stand-alone ops are built alike: sep / dil convs identical; pools and the stride-1 skip
  are ``Sequential(op, BatchNorm2d)`` in both; the stride-2 skip is a FactorizedReduce ending in its own BN in both
  (no BN appended).  The fold rescales each op's last BN (``spaces.networks.output_bn``).

The genotype has exactly the support's s (op, input) pairs per node (``Genotype.ops_per_node = s``; s = 2 in the
papers, any s >= 1 here: the stand-alone cell sums s ops per node).  Two support ops on the same input edge are
fine: the stand-alone cell then reads that input twice.

Export (:func:`export`): ``genotype.json``, ``model.safetensors`` and ``model.pt`` (the same state dict; the
``.pt`` loads with ``torch.load(weights_only=True)``), ``model.onnx`` (eval mode, logits only, dynamic batch) and
``export.json`` (how to rebuild and load it with :mod:`spaces` alone, input normalisation, the folded coefficients,
the stop epochs, file digests, the config).  Every file is written atomically.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from spaces.networks import build_network, is_imagenet, output_bn
from spaces.ops import Identity

from ..checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..config import to_dict
from ..data import MEAN_STD
from ..supernet import CELL_TYPES, SparseSuperNet, edge_offsets
from .compressed import genotype_from_support
from .onestage import OneStageNet

EXPORT_FORMAT = "istanas-onestage-export/1"
_OP_KEY = re.compile(r"^cells\.(\d+)\.ops\.(\d+)\.(.+)$")

__all__ = ["absorb", "support_network", "network_kwargs", "export", "load_exported", "EXPORT_FORMAT"]


def network_kwargs(sn: SparseSuperNet, dataset: Optional[str] = None) -> dict[str, Any]:
    """Keywords of ``spaces.networks.build_network`` for the stand-alone network of super-net ``sn``'s support
    (``bn_after_param_free=True``: every op ends in a BN that takes its coefficient).  ``dataset`` only picks the
    network class (default from the super-net's stem)."""
    if dataset is None:
        dataset = "imagenet" if sn.stem_type == "imagenet" else "cifar10"
    return {"dataset": dataset, "C": sn.C, "layers": sn.layers, "num_classes": sn.num_classes,
            "auxiliary": sn.aux_head is not None, "bn_after_param_free": True, "in_channels": sn.in_channels}


def _check_support(sn: SparseSuperNet, support_host: torch.Tensor) -> torch.Tensor:
    host = support_host.to(torch.int64).cpu()
    T, S = len(CELL_TYPES), sn.steps
    if host.dim() != 3 or tuple(host.shape[:2]) != (T, S) or host.shape[-1] < 1:
        raise ValueError(f"support_host: expected shape [{T}, {S}, s >= 1], got {tuple(host.shape)}")
    return host


def _identity_bn_(bn: nn.BatchNorm2d) -> None:
    """Make an affine BN the identity in eval mode: running mean 0, var 1, gamma = sqrt(1 + eps), beta = 0."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.fill_((1.0 + bn.eps) ** 0.5)
    bn.bias.zero_()


@torch.no_grad()
def support_network(sn: SparseSuperNet, support_host: torch.Tensor, coef: torch.Tensor,
                    kwargs: Optional[dict[str, Any]] = None) -> tuple[nn.Module, Any]:
    """The stand-alone network of ``sn`` restricted to ``support_host`` with the coefficients folded (Eq. 12).

    Args:
        sn: a :class:`istanas.supernet.SparseSuperNet` (one-stage or two-stage ops; any device / dtype).
        support_host: ``[T, steps, s]`` flat candidate ids (any s >= 1).
        coef: ``[T, steps, s]`` the coefficients the super-net's forward multiplies by (Eq. 11), in support order.
        kwargs: :func:`spaces.networks.build_network` keywords (default :func:`network_kwargs`); must keep
            ``bn_after_param_free=True``.
    Returns:
        ``(network, genotype)``: the ``spaces.networks`` model (on ``sn``'s device and dtype, eval mode, drop-path 0)
        and its :class:`spaces.genotype.Genotype` (``ops_per_node = s``).  In eval mode ``network(x)[0]`` equals
        ``sn(x, support_host, coef)`` (see the module doc for what is set where the super-net has no BN).
    Raises:
        ValueError: a module layout that does not match (a bug, never silently wrong weights).
    """
    host = _check_support(sn, support_host)
    kwargs = dict(network_kwargs(sn) if kwargs is None else kwargs)
    if not kwargs.get("bn_after_param_free", False):
        raise ValueError("kwargs: bn_after_param_free=True is needed (every op's coefficient goes into its BN)")
    coef = coef.detach().to(torch.float64).cpu()
    if tuple(coef.shape) != tuple(host.shape):
        raise ValueError(f"coef: expected shape {tuple(host.shape)} (as the support), got {tuple(coef.shape)}")
    genotype = genotype_from_support(host, None, sn.primitives, sn.steps)
    if (sn.stem_type == "imagenet") != is_imagenet(kwargs.get("dataset", "cifar10")):
        raise ValueError(f"dataset {kwargs.get('dataset')!r} implies the other stem than the super-net's "
                         f"{sn.stem_type!r}")
    if sn.stem_type == "cifar" and sn.stem_multiplier != 3:
        raise ValueError(f"stem_multiplier: the stand-alone CIFAR network has 3, the super-net {sn.stem_multiplier}")
    if sn.multiplier != sn.steps:
        raise ValueError("multiplier: the stand-alone cells concatenate every intermediate node")
    p0 = next(sn.parameters())
    model = build_network(genotype, **kwargs).to(device=p0.device, dtype=p0.dtype)
    K, offs, s = sn.num_ops, edge_offsets(sn.steps), genotype.ops_per_node
    src = sn.state_dict()
    dst = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    slots: dict[tuple[int, int], tuple[int, int, int]] = {}      # (cell, j) -> (cell type, node, support slot)
    for c, cell in enumerate(model.cells):
        t = 1 if cell.reduction else 0
        if t != sn.cell_types[c]:
            raise ValueError(f"cell {c}: reduction layout differs between the super-net and the network")
        for j, (name, inp) in enumerate(getattr(genotype, CELL_TYPES[t])):
            i, k = j // s, sn.primitives.index(name)
            ids = host[t, i].tolist()
            slots[(c, j)] = (t, i, ids.index(inp * K + k))
    identity_bns: list[str] = []          # dst BNs with no super-net counterpart (after a BN-less stride-1 skip)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for key in dst:
        m = _OP_KEY.match(key)
        if m:
            c, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            t, i, _ = slots[(c, j)]
            name, inp = getattr(genotype, CELL_TYPES[t])[j]
            skey = f"cells.{c}.edges.{offs[i] + inp}.{sn.primitives.index(name)}.{rest}"
        elif key.startswith("auxiliary_head."):
            skey = "aux_head." + key[len("auxiliary_head."):]
        else:
            skey = key
        mod, _, leaf = key.rpartition(".")
        sprefix = skey.rpartition(".")[0]
        if skey not in src:
            if mod in bns and leaf in ("weight", "bias") and f"{sprefix}.running_mean" in src:
                new[key] = torch.full_like(dst[key], 1.0 if leaf == "weight" else 0.0)   # affine=False BN
                continue
            if mod in bns and m and not any(k.startswith(sprefix + ".") for k in src) \
                    and output_bn(model.cells[int(m.group(1))].ops[int(m.group(2))]) is bns[mod] \
                    and isinstance(_src_op(sn, c, offs[i] + inp, sn.primitives.index(name)), Identity):
                new[key] = dst[key].clone()
                if mod not in identity_bns:
                    identity_bns.append(mod)
                continue
            raise ValueError(f"absorb: no super-net tensor {skey!r} for the network's {key!r}")
        if tuple(src[skey].shape) != tuple(dst[key].shape):
            raise ValueError(f"absorb: {skey!r} {tuple(src[skey].shape)} does not fit {key!r} {tuple(dst[key].shape)}")
        new[key] = src[skey].detach().clone()
    model.load_state_dict(new, strict=True)
    for mod in identity_bns:
        _identity_bn_(bns[mod])
    # Eq. 12: gamma_hat = c * gamma, beta_hat = c * beta on each support op's final BN
    for (c, j), (t, i, slot) in slots.items():
        bn = output_bn(model.cells[c].ops[j])
        if bn is None or not bn.affine:
            raise ValueError(f"absorb: op {j} of cell {c} does not end in an affine BN")
        cv = float(coef[t, i, slot])
        bn.weight.copy_((bn.weight.double() * cv).to(bn.weight.dtype))
        bn.bias.copy_((bn.bias.double() * cv).to(bn.bias.dtype))
    model.drop_path_prob = 0.0
    model.eval()
    return model, genotype


def _src_op(sn: SparseSuperNet, cell: int, edge: int, op: int) -> nn.Module:
    return sn.cells[cell].edges[edge][op]


@torch.no_grad()
def absorb(net, support_host: Optional[torch.Tensor] = None) -> tuple[nn.Module, Any, torch.Tensor]:
    """Eq. 12: the stand-alone network of a :class:`istanas.ista.onestage.OneStageNet`'s support, all weights copied and
    each support op's final BN scaled by its coefficient (:func:`support_network`).

    Args:
        net: the one-stage model (its ``supernet``, ``space`` and current support; any device / dtype).
        support_host: ``[T, steps, s]`` flat candidate ids (default: the net's current support).
    Returns:
        ``(network, genotype, coef)``: the ``spaces.networks`` model (on the net's device and dtype, in eval mode,
        drop-path 0), its :class:`spaces.genotype.Genotype` (s ops per node), and the folded coefficients
        ``coef [T, steps, s]`` (float64, CPU, in support order).  Exactly the coefficients the super-net's forward
        multiplies by (``net.coefficients()``) are folded, the product taken in float64.
    Raises:
        ValueError: a module layout that does not match (a bug, never silently wrong weights).
    """
    host = _check_support(net.supernet, net.support_host if support_host is None else support_host)
    if torch.equal(host, net.support_host):
        coef = net.coefficients().detach().to(torch.float64).cpu()
    else:
        with torch.autocast(net.support.device.type, enabled=False):
            coef = net.space.coefficients(host.to(net.support.device)).detach().to(torch.float64).cpu()
    model, genotype = support_network(net.supernet, host, coef, net.network_kwargs())
    return model, genotype, coef


class _LogitsOnly(nn.Module):
    """``x -> logits`` of a ``spaces.networks`` model (which returns ``(logits, aux)``), for ONNX."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _onnx_bytes(model: nn.Module, example: torch.Tensor, folder: str) -> tuple[bytes, dict]:
    """ONNX of ``model`` (eval, logits only, dynamic batch): the dynamo exporter, else the TorchScript one."""
    import tempfile

    wrapped = _LogitsOnly(model).eval()
    info: dict[str, Any] = {"input_name": "input", "output_name": "logits", "dynamic_axes": {"input": [0],
                                                                                             "logits": [0]}}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".onnx")
    os.close(fd)
    try:
        try:
            with warnings.catch_warnings(), _quiet():
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["input"],
                                         output_names=["logits"], external_data=False, verbose=False,
                                         dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
                prog.save(tmp, external_data=False)
            info["exporter"] = "dynamo"
        except Exception as e:  # noqa: BLE001 - fall back to the TorchScript exporter
            info["dynamo_error"] = f"{type(e).__name__}: {e}"[:500]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (example,), tmp, dynamo=False, input_names=["input"],
                                  output_names=["logits"], opset_version=17,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            info["exporter"] = "torchscript"
        with open(tmp, "rb") as f:
            data = f.read()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        import onnx

        info["opset"] = int(max(o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("",
                                                                                                        "ai.onnx")))
    except Exception:  # noqa: BLE001 - informative only
        pass
    return data, info


class _quiet:
    """Silence the exporter's progress prints on stdout."""

    def __enter__(self):
        import contextlib

        self._cm = contextlib.redirect_stdout(io.StringIO())
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


LOAD_SNIPPET = """\
import json, torch
from spaces.networks import build_network
info = json.load(open("export.json"))
net = build_network(json.dumps(info["genotype"]), **info["network"])
net.load_state_dict(torch.load("model.pt", weights_only=True))   # or safetensors.torch.load_file("model.safetensors")
net.eval()
logits, _ = net(x)   # x: [N, C, H, W], normalised with info["input"]["mean"] / ["std"]
"""


def export(task_or_parts: Union[Any, tuple], out_dir: str, *, onnx: bool = True,
           extra: Optional[dict] = None) -> dict[str, str]:
    """Fold (:func:`absorb`) and write the stand-alone model into ``out_dir``; returns ``{kind: path}``.

    ``task_or_parts``: a :class:`istanas.ista.onestage.OneStageTask` (its net, config, stop epochs and input
    normalisation are recorded), a :class:`istanas.ista.onestage.OneStageNet`, or ``(net, support_host)``.
    Files (each written atomically): ``genotype.json``, ``model.safetensors``, ``model.pt`` (state dict,
    ``weights_only``), ``model.onnx`` (unless ``onnx=False``) and ``export.json``.  The exported weights are float32
    (the model is folded in the net's dtype, then converted).  ``extra``: more entries for ``export.json``.
    """
    from safetensors.torch import save as st_save

    task = None
    support = None
    if isinstance(task_or_parts, tuple):
        net, support = task_or_parts
    elif isinstance(task_or_parts, OneStageNet):
        net = task_or_parts
    else:
        task, net = task_or_parts, task_or_parts.net
    was = net.training
    try:
        model, genotype, coef = absorb(net, support)
    finally:
        net.train(was)
    model = model.float().cpu().eval()
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    paths = {"genotype": os.path.join(out_dir, "genotype.json"),
             "safetensors": os.path.join(out_dir, "model.safetensors"),
             "state_dict": os.path.join(out_dir, "model.pt"), "export": os.path.join(out_dir, "export.json")}
    files: dict[str, dict] = {}
    gtext = genotype.to_json(indent=2) + "\n"
    atomic_write_text(paths["genotype"], gtext)
    files["genotype.json"] = {"sha256": _sha256(gtext.encode())}
    blob = st_save(state, metadata={"format": EXPORT_FORMAT, "genotype": genotype.to_json()})
    atomic_write_bytes(paths["safetensors"], blob)
    files["model.safetensors"] = {"sha256": _sha256(blob)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(paths["state_dict"], buf.getvalue())
    files["model.pt"] = {"sha256": _sha256(buf.getvalue())}
    sn = net.supernet
    size = int(net.image_size)
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "genotype": genotype.to_dict(),
        "genotype_digest": genotype.digest(),
        "network": net.network_kwargs(),
        "input": {"shape": [1, sn.in_channels, size, size]},
        "coefficients": {n: [[float(v) for v in row] for row in coef[t].tolist()] for t, n in enumerate(CELL_TYPES)},
        "support": net.support_host.tolist() if support is None else support.tolist(),
        "parameters": int(sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head"))),
        "how_to_load": LOAD_SNIPPET,
        "torch": torch.__version__,
    }
    if task is not None:
        train = getattr(task.loaders, "train", None)
        for j, attr in enumerate(("mean", "std")):
            v = getattr(train, attr, None)
            if isinstance(v, torch.Tensor):                # in-memory loaders normalise with these
                info["input"][attr] = [float(a) for a in v.flatten().tolist()]
            elif task.cfg.data.dataset in MEAN_STD:        # streamed CIFAR / ImageNet: the standard statistics
                info["input"][attr] = [float(a) for a in MEAN_STD[task.cfg.data.dataset][j]]
        info["config"] = to_dict(task.cfg)
        info.update(task.stop_report())
    if onnx:
        example = torch.zeros(1, sn.in_channels, size, size)
        data, oinfo = _onnx_bytes(model, example, out_dir)
        paths["onnx"] = os.path.join(out_dir, "model.onnx")
        atomic_write_bytes(paths["onnx"], data)
        files["model.onnx"] = {"sha256": _sha256(data)}
        info["onnx"] = oinfo
    info["files"] = files
    if extra:
        info.update(extra)
    atomic_write_json(paths["export"], info)
    return paths


def load_exported(out_dir: str, map_location: str | torch.device = "cpu", use_safetensors: bool = False) -> nn.Module:
    """Rebuild an exported model with :mod:`spaces` and load its weights (``weights_only``); eval mode."""
    with open(os.path.join(out_dir, "export.json"), encoding="utf-8") as f:
        info = json.load(f)
    net = build_network(json.dumps(info["genotype"]), **info["network"])
    if use_safetensors:
        from safetensors.torch import load_file

        state = load_file(os.path.join(out_dir, "model.safetensors"), device=str(map_location))
    else:
        state = torch.load(os.path.join(out_dir, "model.pt"), map_location=map_location, weights_only=True)
    net.load_state_dict(state)
    return net.to(map_location).eval()
