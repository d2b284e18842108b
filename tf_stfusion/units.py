"""The fusion units a layer can use and the paper's fixed strategies, as names.

A unit is one of ``S`` (2D spatial path), ``ST`` ((2+1)D spatiotemporal path),
``S+ST`` (both, summed) or ``none`` (neither: the layer is skipped); the fixed
strategies S / ST / S+ST use one unit in every layer -- the baselines of the
paper's Table 2 (Zhou et al., CVPR 2020, Sec. 5). ``strategy.Strategy`` gives
them meaning (``strategy.UNIT_MASKS``); the gates' paths ``S`` / ``ST`` / ``D1``
(``gating``) are another concept.

No TensorFlow here: the command lines name the fixed strategies in their flags
before TensorFlow starts.
"""

UNITS = ("S", "ST", "S+ST", "none")
FIXED_STRATEGIES = ("S", "ST", "S+ST")  # each strategy named by the unit of every layer
