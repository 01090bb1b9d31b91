"""Independent re-check of overflow certificates from the integer codes alone (numpy).

Same definition as docs/certificate.md: for codes q and input codes in [mu, nu], per (channel, tile)
hi = sum max(q*mu, q*nu), lo = sum min(q*mu, q*nu). Nothing the certificate claims is trusted: the
verifier rejects bit widths outside the supported ranges, recomputes every bound with arithmetic
that cannot overflow (|q| <= 128 and |mu|, |nu| <= 2^16 keep each term under 2^23; K < 2^30 keeps
a row under 2^53, exact in int64 and in float64), and can pin the hardware's P, T, N, signedness
and M so that an honest certificate for another datapath does not pass."""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

WEIGHT_BITS = (2, 8)        # M
INPUT_BITS = (2, 16)        # N
ACCUMULATOR_BITS = (2, 64)  # P (P_I when tiled)
MAX_INPUTS = 1 << 30        # K


class Verdict(NamedTuple):
    """consistent: every claim (and every pinned expectation) matches the recomputation;
    safe: the recomputed verdict under the effective assumptions (pins override claims);
    problems: what did not match, in words."""
    consistent: bool
    safe: bool
    problems: list

    @property
    def ok(self) -> bool:
        return self.consistent and self.safe


def codes_sha256(codes) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes, dtype=np.int8).tobytes()).hexdigest()


def _int_in(name: str, v, bounds) -> int:
    """Returns v as an int when it is an integer (not a bool) within bounds; else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if not bounds[0] <= v <= bounds[1]:
        raise ValueError(f"{name} = {v} is outside the supported range {bounds[0]}..{bounds[1]}")
    return v


def _bool(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be a boolean, got {v!r}")
    return bool(v)


def input_range(bits: int, signed: bool):
    """(mu, nu): the integer input code range of N-bit inputs."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def effective_tile(tile_size: int, k: int) -> int:
    """T; 0 (or anything >= K) means monolithic, i.e. T = K."""
    return k if tile_size <= 0 or tile_size >= k else tile_size


def outer_bits(p: int, k: int, t: int) -> int:
    """P_O of Eq. 21: ceil(P_I + log2(K / T)) (= P when monolithic)."""
    e = 0
    while t < k and (t << e) < k:
        e += 1
    return p + e


def _codes(codes) -> np.ndarray:
    q = np.asarray(codes)
    if q.ndim != 2 or q.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"codes must be a non-empty [C, K] matrix, got shape {q.shape}")
    if q.shape[1] >= MAX_INPUTS:
        raise ValueError(f"K = {q.shape[1]} exceeds the verifier's limit of 2^30 inputs")
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {q.dtype}")
    if q.size and (int(q.min()) < -128 or int(q.max()) > 127):
        raise ValueError("codes do not fit int8")
    return q.astype(np.int64)


def tile_bounds(q: np.ndarray, mu: int, nu: int, t: int):
    """Per (channel, tile) lo and hi, int64 [C, tiles] (exact: see the module comment)."""
    c, k = q.shape
    tiles = -(-k // t)
    pad = np.zeros((c, tiles * t), dtype=np.int64)
    pad[:, :k] = q
    pad = pad.reshape(c, tiles, t)
    a, b = pad * mu, pad * nu
    return np.minimum(a, b).sum(axis=2), np.maximum(a, b).sum(axis=2)


def _min_bits(lo: np.ndarray, hi: np.ndarray, twos: bool) -> np.ndarray:
    """Smallest P with -lo <= 2^(P-1) - 1 (+1 with two's complement) and hi <= 2^(P-1) - 1."""
    mag = np.maximum(hi, np.maximum(-lo - (1 if twos else 0), 0))
    _, e = np.frexp(mag.astype(np.float64))  # exact: mag < 2^53; e = bit length for mag > 0
    return np.where(mag > 0, e + 1, 1)


def compute_certificate(codes, input_bits: int, inputs_signed: bool, accumulator_bits: int,
                        tile_size: int = 0, twos_complement: bool = False, weight_bits: int = 8) -> dict:
    """Returns the certificate of codes [C, K] for N-bit inputs and a P-bit accumulator (P_I per
    tile of T inputs in the original order, outer P_O by Eq. 21). ValueError on bit widths
    outside M 2..8, N 2..16, P 2..64 or codes outside int8."""
    weight_bits = _int_in("weight_bits", weight_bits, WEIGHT_BITS)
    input_bits = _int_in("input_bits", input_bits, INPUT_BITS)
    p = _int_in("accumulator_bits", accumulator_bits, ACCUMULATOR_BITS)
    inputs_signed, twos = _bool("inputs_signed", inputs_signed), _bool("twos_complement", twos_complement)
    q = _codes(codes)
    c, k = q.shape
    t = effective_tile(_int_in("tile_size", tile_size, (0, 1 << 62)), k)
    mu, nu = input_range(input_bits, inputs_signed)
    lo_t, hi_t = tile_bounds(q, mu, nu, t)
    bits_t = _min_bits(lo_t, hi_t, twos)
    # worst tile: most bits, then largest magnitude, first index on ties (as core/ picks it)
    tiles = lo_t.shape[1]
    mag = np.maximum(hi_t, -lo_t)
    order = np.lexsort((-np.arange(tiles)[None, :].repeat(c, 0), mag, bits_t), axis=1)
    worst = order[:, -1]
    rows = np.arange(c)
    row_lo, row_hi = lo_t.sum(axis=1), hi_t.sum(axis=1)
    outer = outer_bits(p, k, t)
    pos, pos_o = (1 << (p - 1)) - 1, (1 << (outer - 1)) - 1  # Python ints: no overflow at P = 64
    neg, neg_o = pos + int(twos), pos_o + int(twos)
    w_lo, w_hi = lo_t[rows, worst], hi_t[rows, worst]
    unsafe = sum(1 for a, b in zip(w_lo.tolist(), w_hi.tolist()) if b > pos or -a > neg)
    rows_fit = all(b <= pos_o and -a <= neg_o for a, b in zip(row_lo.tolist(), row_hi.tolist()))
    min_bits = int(bits_t.max())
    min_outer = max(int(_min_bits(row_lo, row_hi, twos).max()), min_bits)
    return {
        "weights_sha256": codes_sha256(q), "output_channels": c, "inputs": k, "weight_bits": weight_bits,
        "input_bits": input_bits, "inputs_signed": inputs_signed, "input_min": mu, "input_max": nu,
        "accumulator_bits": p, "tile_size": t, "twos_complement": twos,
        "outer_accumulator_bits": outer, "min_accumulator_bits": min_bits,
        "min_outer_accumulator_bits": min_outer, "unsafe_channels": unsafe,
        "safe": unsafe == 0 and rows_fit,
        "channels": [{"lo": int(a), "hi": int(b), "tile": int(w), "row_lo": int(rl), "row_hi": int(rh)}
                     for a, b, w, rl, rh in zip(w_lo, w_hi, worst, row_lo, row_hi)],
    }


_RECOMPUTED = ("weights_sha256", "output_channels", "inputs", "input_min", "input_max", "outer_accumulator_bits",
               "min_accumulator_bits", "min_outer_accumulator_bits", "unsafe_channels", "safe")


def _claims(cert) -> dict:
    if not isinstance(cert, dict):
        raise ValueError(f"the certificate must be a JSON object, got {type(cert).__name__}")
    missing = [key for key in ("input_bits", "inputs_signed", "accumulator_bits", "tile_size", "weight_bits")
               if key not in cert]
    if missing:
        raise ValueError(f"the certificate lacks {', '.join(missing)}")
    return {"input_bits": _int_in("input_bits", cert["input_bits"], INPUT_BITS),
            "inputs_signed": _bool("inputs_signed", cert["inputs_signed"]),
            "accumulator_bits": _int_in("accumulator_bits", cert["accumulator_bits"], ACCUMULATOR_BITS),
            "tile_size": _int_in("tile_size", cert["tile_size"], (0, 1 << 62)),
            "twos_complement": _bool("twos_complement", cert.get("twos_complement", False)),
            "weight_bits": _int_in("weight_bits", cert["weight_bits"], WEIGHT_BITS)}


def _pin(claims: dict, k: int, pins: dict, problems: list) -> dict:
    """Returns the assumptions to recompute under: the claims, overridden by the hardware's pins;
    each pin that differs from the claim is a problem."""
    eff = dict(claims)
    for key, value in pins.items():
        if value is None:
            continue
        if key == "tile_size":
            value = _int_in("pinned tile_size", value, (0, 1 << 62))
            same = effective_tile(value, k) == effective_tile(claims[key], k)
        elif key in ("inputs_signed", "twos_complement"):
            value = _bool(f"pinned {key}", value)
            # a register that holds -2^(P-1) only widens what a sign-magnitude certificate proved
            same = value == claims[key] or (key == "twos_complement" and value)
        else:
            bounds = {"accumulator_bits": ACCUMULATOR_BITS, "input_bits": INPUT_BITS, "weight_bits": WEIGHT_BITS}[key]
            value = _int_in(f"pinned {key}", value, bounds)
            same = value == claims[key]
        if not same:
            problems.append(f"{key}: the certificate assumes {claims[key]!r}, the hardware has {value!r}")
            eff[key] = value
    return eff


def verify_certificate(codes, cert, *, accumulator_bits=None, tile_size=None, input_bits=None, inputs_signed=None,
                       weight_bits=None, twos_complement=None) -> Verdict:
    """Recomputes every field of cert from the codes and checks it against the hardware's pinned
    P (P_I), T, N, signedness, M and register range (None: take the certificate's word). Returns a
    Verdict (unpacks as consistent, safe, problems). Never raises on a malformed certificate."""
    problems = []
    if cert is None:
        return Verdict(False, False, ["no certificate"])
    try:
        q = _codes(codes)
        claims = _claims(cert)
        pins = {"accumulator_bits": accumulator_bits, "tile_size": tile_size, "input_bits": input_bits,
                "inputs_signed": inputs_signed, "weight_bits": weight_bits, "twos_complement": twos_complement}
        eff = _pin(claims, q.shape[1], pins, problems)
        claimed = compute_certificate(q, **claims)
        actual = compute_certificate(q, **eff) if eff != claims else claimed
    except ValueError as e:
        return Verdict(False, False, problems + [f"malformed certificate or codes: {e}"])
    for key in _RECOMPUTED:
        if cert.get(key) != claimed[key]:
            problems.append(f"{key}: claimed {cert.get(key)!r}, recomputed {claimed[key]!r}")
    if effective_tile(claims["tile_size"], q.shape[1]) != claims["tile_size"]:
        problems.append(f"tile_size: claimed {claims['tile_size']}, the effective tile is {claimed['tile_size']}")
    wb = eff["weight_bits"]
    on_grid = -(1 << (wb - 1)) <= int(q.min()) and int(q.max()) <= (1 << (wb - 1)) - 1
    if not on_grid:
        problems.append(f"codes exceed the {wb}-bit alphabet (range [{int(q.min())}, {int(q.max())}])")
    ch = cert.get("channels")
    if not isinstance(ch, list) or len(ch) != len(claimed["channels"]):
        problems.append(f"channels: claimed {len(ch) if isinstance(ch, list) else ch!r} entries, "
                        f"the codes have {len(claimed['channels'])} channels")
    else:
        keys = ("lo", "hi", "row_lo", "row_hi")
        bad = [i for i, (a, b) in enumerate(zip(ch, claimed["channels"]))
               if not isinstance(a, dict) or tuple(a.get(x) for x in keys) != tuple(b[x] for x in keys)]
        problems += [f"channel {i}: claimed {ch[i]!r}, recomputed {claimed['channels'][i]!r}" for i in bad[:5]]
        if len(bad) > 5:
            problems.append(f"... and {len(bad) - 5} more channels differ")
    return Verdict(not problems, bool(actual["safe"]) and on_grid, problems)
