"""Search spaces of istanas: op registries, genotypes, published architectures, evaluation networks, size
profiling (``spaces.plot`` draws cells; it is not imported here so that matplotlib stays unloaded)."""
from spaces.genotype import Genotype, NB201Genotype
from spaces.networks import build_network
from spaces.ops import (DARTS_OPS, DARTS_PRIMITIVES, NB201_OPS, NB201_PRIMITIVES, OP_REGISTRIES, PARAM_FREE_OPS,
                        build_op)
from spaces.profile import count_flops, count_parameters
from spaces.registry import get_genotype, list_genotypes, load_genotype, register_genotype

__all__ = ["Genotype", "NB201Genotype", "load_genotype", "get_genotype", "list_genotypes", "register_genotype",
           "build_network", "count_parameters", "count_flops", "DARTS_PRIMITIVES", "NB201_PRIMITIVES", "DARTS_OPS",
           "NB201_OPS", "OP_REGISTRIES", "PARAM_FREE_OPS", "build_op"]
