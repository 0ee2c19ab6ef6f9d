"""FLOPs of a traced program: 2 per multiply-add of its convolutions and matrix products.

Counted from the jaxpr, so the figure is the same on every backend (XLA's
cost analysis leaves out GPU convolutions, which run as cuDNN custom calls);
padding taps count, elementwise work does not.
"""

from __future__ import annotations

import numpy as np


def jaxpr_flops(jaxpr) -> float:
    """2 x multiply-adds of every convolution and matrix product in a (closed) jaxpr, sub-jaxprs included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            out = eqn.outvars[0].aval
            dn = eqn.params["dimension_numbers"]
            kernel = np.prod([rhs.shape[i] for i in dn.rhs_spec[2:]])
            cin = rhs.shape[dn.rhs_spec[1]]
            total += 2.0 * np.prod(out.shape) * kernel * cin
        elif name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            contract = np.prod([lhs.shape[i] for i in lc])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * contract
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):  # a ClosedJaxpr (pjit, loops, ...)
                    total += jaxpr_flops(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    total += jaxpr_flops(sub)
    return total
