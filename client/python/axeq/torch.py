"""axeq.torch: quantized layers back in PyTorch (QuantLinear, apply_result, integer inference with
P-bit accumulators, save/load). The code lives in axeq.quant so that no module of this package is
named like the real torch package it imports."""
from .quant import (QuantLinear, apply_result, datapath, load_quantized, overflow_counters,  # noqa: F401
                    quant_linears, reset_counters, save_quantized, set_datapath)
