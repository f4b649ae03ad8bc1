"""Published genotypes, kept as data (JSON-able dicts), a small name -> genotype registry, and
:func:`load_genotype` (a name, a ``.json`` file, JSON text or an NB201 arch string -> a genotype).

Sources (transcribed from the papers and their released code):

* ``DARTS_V1`` / ``DARTS_V2``: DARTS first / second order (Liu et al., ICLR 2019); ``DARTS`` is ``DARTS_V2``.
* ``PC_DARTS``: PC-DARTS searched on CIFAR-10 (Xu et al., ICLR 2020).
* ``ISTA_twostage``, ``ISTA_onestage``, ``ISTA_ImageNet``: ISTA-NAS (Yang et al., NeurIPS 2020), from the reference
  code's tools/genotypes.py.  ``ISTA_onestage`` is meant to be built with ``bn_after_param_free=True``.
* ``NB201_ResNet``: the residual cell NAS-Bench-201 uses as its ResNet reference (Dong & Yang, ICLR 2020).

Published sizes (parameters without the auxiliary head): DARTS_V2 3.3 M (CIFAR-10, 36 ch, 20 cells) and 4.7 M /
574 M FLOPs (ImageNet, 48 ch, 14 cells); ISTA_twostage 3.32 M; ISTA_onestage 3.37 M (CIFAR-10) and 4.78 M / 550 M
(ImageNet); ISTA_ImageNet 5.65 M / 638 M; PC_DARTS 3.6 M (CIFAR-10).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from spaces.genotype import AnyGenotype, Genotype, NB201Genotype, genotype_from_dict, genotype_from_json

_C = [2, 3, 4, 5]


def _darts(normal: list, reduce: list) -> dict:
    return {"space": "darts", "normal": normal, "normal_concat": list(_C), "reduce": reduce,
            "reduce_concat": list(_C)}


#: The published genotypes in their JSON form (2 [op, input] pairs per node, nodes 2..5).
PUBLISHED: dict[str, dict] = {
    "DARTS_V1": _darts(
        normal=[["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["skip_connect", 0], ["sep_conv_3x3", 1],
                ["skip_connect", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["skip_connect", 2]],
        reduce=[["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 0],
                ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["avg_pool_3x3", 0]]),
    "DARTS_V2": _darts(
        normal=[["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1],
                ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]],
        reduce=[["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
                ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]]),
    "PC_DARTS": _darts(
        normal=[["sep_conv_3x3", 1], ["skip_connect", 0], ["sep_conv_3x3", 0], ["dil_conv_3x3", 1],
                ["sep_conv_5x5", 0], ["sep_conv_3x3", 1], ["avg_pool_3x3", 0], ["dil_conv_3x3", 1]],
        reduce=[["sep_conv_5x5", 1], ["max_pool_3x3", 0], ["sep_conv_5x5", 1], ["sep_conv_5x5", 2],
                ["sep_conv_3x3", 0], ["sep_conv_3x3", 3], ["sep_conv_3x3", 1], ["sep_conv_3x3", 2]]),
    "ISTA_twostage": _darts(
        normal=[["skip_connect", 0], ["dil_conv_3x3", 1], ["sep_conv_5x5", 0], ["dil_conv_3x3", 2],
                ["dil_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 2], ["skip_connect", 0]],
        reduce=[["avg_pool_3x3", 0], ["sep_conv_5x5", 1], ["dil_conv_5x5", 2], ["max_pool_3x3", 1],
                ["dil_conv_5x5", 3], ["sep_conv_3x3", 1], ["dil_conv_5x5", 4], ["sep_conv_5x5", 1]]),
    "ISTA_onestage": _darts(
        normal=[["skip_connect", 0], ["dil_conv_3x3", 1], ["sep_conv_3x3", 1], ["dil_conv_5x5", 2],
                ["avg_pool_3x3", 3], ["sep_conv_3x3", 1], ["sep_conv_5x5", 1], ["sep_conv_3x3", 2]],
        reduce=[["avg_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 0], ["max_pool_3x3", 1],
                ["sep_conv_5x5", 1], ["avg_pool_3x3", 0], ["max_pool_3x3", 0], ["dil_conv_5x5", 2]]),
    "ISTA_ImageNet": _darts(
        normal=[["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 2],
                ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["dil_conv_5x5", 4]],
        reduce=[["skip_connect", 0], ["sep_conv_3x3", 1], ["dil_conv_5x5", 2], ["sep_conv_3x3", 0],
                ["sep_conv_3x3", 0], ["skip_connect", 2], ["sep_conv_3x3", 2], ["skip_connect", 3]]),
    "NB201_ResNet": {"space": "nb201",
                     "arch": "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"},
}

#: Alternative names -> canonical names.
ALIASES: dict[str, str] = {"DARTS": "DARTS_V2"}

_REGISTRY: dict[str, AnyGenotype] = {name: genotype_from_dict(d) for name, d in PUBLISHED.items()}
_ALIASES: dict[str, str] = dict(ALIASES)


def _lookup(name: str) -> Optional[AnyGenotype]:
    return _REGISTRY.get(_ALIASES.get(name, name))


def list_genotypes() -> list[str]:
    """Registered names (aliases included), sorted."""
    return sorted(set(_REGISTRY) | set(_ALIASES))


def get_genotype(name: str) -> AnyGenotype:
    """The genotype registered as ``name``; ``KeyError`` listing the known names otherwise."""
    g = _lookup(name) if isinstance(name, str) else None
    if g is None:
        raise KeyError(f"unknown genotype {name!r}; known: {', '.join(list_genotypes())}")
    return g


def register_genotype(name: str, genotype: Union[AnyGenotype, Mapping[str, Any], str],
                      overwrite: bool = False) -> AnyGenotype:
    """Register ``genotype`` (anything :func:`load_genotype` reads) under ``name``.

    Re-registering an existing name (or alias) raises ``ValueError`` unless ``overwrite``; an equal genotype
    under the same name is accepted silently.  Returns the stored genotype.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"name: expected a non-empty name without surrounding spaces, got {name!r}")
    if name.startswith(("{", "|")):
        raise ValueError(f"name: {name!r} would be read as JSON / an arch string")
    g = load_genotype(genotype)
    old = _lookup(name)
    if old is not None and old != g and not overwrite:
        raise ValueError(f"name: {name!r} is already registered (pass overwrite=True to replace it)")
    _ALIASES.pop(name, None)
    _REGISTRY[name] = g
    return g


def load_genotype(name_or_path_or_json: Union[str, os.PathLike, Mapping[str, Any], AnyGenotype]) -> AnyGenotype:
    """A genotype from a registered name, a ``.json`` file, JSON text or an NB201 arch string.

    A ``Genotype`` / ``NB201Genotype`` is returned as is and a mapping is read as the JSON object.  Text that
    is none of these raises ``ValueError`` (field ``genotype``).
    """
    g = name_or_path_or_json
    if isinstance(g, (Genotype, NB201Genotype)):
        return g
    if isinstance(g, Mapping):
        return genotype_from_dict(g)
    if isinstance(g, os.PathLike):
        g = os.fspath(g)
    if not isinstance(g, str):
        raise ValueError(f"genotype: expected a name, a path, JSON text or a genotype, got {type(g).__name__}")
    text = g.strip()
    if text.startswith(("{", "[")):
        return genotype_from_json(text)
    if text.startswith("|"):
        return NB201Genotype.from_arch_str(text)
    found = _lookup(text)
    if found is not None:
        return found
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"genotype: cannot read {text!r}: {e}") from None
        return genotype_from_json(content, what=f"genotype file {text!r}")
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ValueError(f"genotype: {shown!r} is neither a registered name ({', '.join(list_genotypes())}), "
                     f"an existing JSON file, JSON text nor a NAS-Bench-201 arch string")


__all__ = ["PUBLISHED", "ALIASES", "list_genotypes", "get_genotype", "register_genotype", "load_genotype",
           "Genotype", "NB201Genotype"]
