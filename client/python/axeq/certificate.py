"""Independent re-check of overflow certificates from the integer codes alone (numpy, int64).
Same definition as docs/certificate.md: for codes q and input codes in [mu, nu], per (channel,
tile) hi = sum max(q*mu, q*nu), lo = sum min(q*mu, q*nu); never trusts the server's claims."""
from __future__ import annotations

import hashlib
import math

import numpy as np


def codes_sha256(codes) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes, dtype=np.int8).tobytes()).hexdigest()


def _min_bits(lo: np.ndarray, hi: np.ndarray, twos: bool) -> np.ndarray:
    mag = np.maximum(hi, np.maximum(-lo - (1 if twos else 0), 0))
    # smallest p with mag <= 2^(p-1) - 1
    return np.array([max(1, int(m).bit_length() + 1) if m > 0 else 1 for m in mag.ravel()]).reshape(mag.shape)


def compute_certificate(codes, input_bits: int, inputs_signed: bool, accumulator_bits: int,
                        tile_size: int = 0, twos_complement: bool = False, weight_bits: int = 8) -> dict:
    q = np.asarray(codes, dtype=np.int64)
    c, k = q.shape
    t = k if tile_size <= 0 or tile_size > k else tile_size
    mu = -(1 << (input_bits - 1)) if inputs_signed else 0
    nu = (1 << (input_bits - 1)) - 1 if inputs_signed else (1 << input_bits) - 1
    tiles = math.ceil(k / t)
    pad = np.zeros((c, tiles * t), dtype=np.int64)
    pad[:, :k] = q
    pad = pad.reshape(c, tiles, t)
    hi_t = np.maximum(pad * mu, pad * nu).sum(axis=2)
    lo_t = np.minimum(pad * mu, pad * nu).sum(axis=2)
    bits_t = _min_bits(lo_t, hi_t, twos_complement)
    # worst tile: most bits, then largest magnitude (first on ties), as the server picks it
    mag = np.maximum(hi_t, -lo_t)
    order = np.lexsort((-np.arange(tiles)[None, :].repeat(c, 0), mag, bits_t), axis=1)
    worst = order[:, -1]
    rows = np.arange(c)
    row_lo, row_hi = lo_t.sum(axis=1), hi_t.sum(axis=1)
    e = 0
    while (t << e) < k:
        e += 1
    outer = accumulator_bits + (e if t < k else 0)
    pos = (1 << (min(accumulator_bits, 62) - 1)) - 1
    neg = pos + (1 if twos_complement else 0)
    pos_o = (1 << (min(outer, 62) - 1)) - 1
    neg_o = pos_o + (1 if twos_complement else 0)
    w_lo, w_hi = lo_t[rows, worst], hi_t[rows, worst]
    unsafe = int(((w_hi > pos) | (-w_lo > neg)).sum())
    rows_fit = bool(((row_hi <= pos_o) & (-row_lo <= neg_o)).all())
    min_bits = int(bits_t.max()) if bits_t.size else 1
    min_outer = max(int(_min_bits(row_lo, row_hi, twos_complement).max()) if c else 1, min_bits)
    return {
        "weights_sha256": codes_sha256(codes), "output_channels": c, "inputs": k, "weight_bits": weight_bits,
        "input_bits": input_bits, "inputs_signed": inputs_signed, "input_min": mu, "input_max": nu,
        "accumulator_bits": accumulator_bits, "tile_size": t, "twos_complement": twos_complement,
        "outer_accumulator_bits": outer, "min_accumulator_bits": min_bits,
        "min_outer_accumulator_bits": min_outer, "unsafe_channels": unsafe,
        "safe": unsafe == 0 and rows_fit,
        "channels": [{"lo": int(a), "hi": int(b), "tile": int(w), "row_lo": int(rl), "row_hi": int(rh)}
                     for a, b, w, rl, rh in zip(w_lo, w_hi, worst, row_lo, row_hi)],
    }


def verify_certificate(codes, claimed: dict):
    """Returns (consistent, safe, problems): recomputes every field from the codes and the claimed
    assumptions (input range, P, T, two's complement)."""
    problems = []
    try:
        re = compute_certificate(codes, int(claimed["input_bits"]), bool(claimed["inputs_signed"]),
                                 int(claimed["accumulator_bits"]), int(claimed["tile_size"]),
                                 bool(claimed["twos_complement"]), int(claimed.get("weight_bits", 8)))
    except (KeyError, TypeError, ValueError) as e:
        return False, False, [f"malformed certificate: {e}"]
    for key in ("weights_sha256", "output_channels", "inputs", "input_min", "input_max",
                "outer_accumulator_bits", "min_accumulator_bits", "min_outer_accumulator_bits",
                "unsafe_channels", "safe"):
        if claimed.get(key) != re[key]:
            problems.append(f"{key}: claimed {claimed.get(key)!r}, recomputed {re[key]!r}")
    wb = int(claimed.get("weight_bits", 8))
    q = np.asarray(codes)
    if q.size and (q.max() >= (1 << (wb - 1)) or q.min() < -(1 << (wb - 1))):
        problems.append(f"codes exceed the {wb}-bit alphabet")
    ch = claimed.get("channels", [])
    if len(ch) != len(re["channels"]):
        problems.append(f"channels: claimed {len(ch)} entries, codes have {len(re['channels'])}")
    else:
        bad = [i for i, (a, b) in enumerate(zip(ch, re["channels"]))
               if (a["lo"], a["hi"], a.get("row_lo", a["lo"]), a.get("row_hi", a["hi"])) != (b["lo"], b["hi"], b["row_lo"], b["row_hi"])]
        problems += [f"channel {i}: claimed [{ch[i]['lo']}, {ch[i]['hi']}], recomputed [{re['channels'][i]['lo']}, {re['channels'][i]['hi']}]" for i in bad[:5]]
    return not problems, re["safe"], problems
