#!/usr/bin/python3
"""The reference implementation's accumulator-aware GPFQ loop (Brevitas v0.12.0, A2GPFQ in
src/brevitas_examples/common/axe.py), restated from its description in numpy to compare it with
axeq on IDENTICAL inputs X, X~ and weights W (written by `fidelity --dump DIR`), so that the
activation quantizer is not a confounder. Its float-to-int truncation of the running sums is fixed
here (exact integer codes), as in the issue's measurements. Everything else follows the reference:
float32 statistics H = X~^T X~ / D and G = X~^T X / D without damping; per step t
  v = G_tt/H_tt w_i + sum_{j<t} G_tj/H_tt w_j - sum_{j<t} H_tj/H_tt q_j
then the soft threshold (lambda of the mean-centred tile row of w/s, Duchi projection onto the L1
ball of radius (2^P - 2)/(2^N - 1), times s), the greedy clip at +-((2^(P-1)-1)/nu - running sum) -+ 0.5,
round to nearest. Order: natural (gpfq_mode's default act_order=False) or act-order.
Usage: reference_a2gpfq.py DUMP_DIR   (prints a Markdown table; reads DUMP_DIR/axeq_gpfq.tsv)"""
import sys

import numpy as np

LAYERS = ("h.0.attn.k", "h.5.attn.q", "h.11.attn.o")
CONFIGS = (("T=128 P=16", 128, 16), ("T=32 P_I=14", 32, 14), ("mono P=16", 0, 16))
M, N = 4, 8


def l1_threshold(v, z):
    a = np.abs(v)
    if a.sum() <= z:
        return 0.0
    u = np.sort(a)[::-1]
    cs = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(u) + 1) > (cs - z))[0][-1]
    return float(cs[rho] - z) / (rho + 1)


def a2gpfq(x, xq, w, tile, p, act_order):
    d, k = x.shape
    c = w.shape[0]
    tile = tile or k
    qmax = 2 ** (M - 1) - 1
    s = (np.abs(w).max(1) / qmax).astype(np.float32)
    h = (xq.T @ xq) / np.float32(d)
    g = (xq.T @ x) / np.float32(d)
    tiles = k // tile
    wt = (w / s[:, None]).reshape(c * tiles, tile)
    wt = wt - wt.mean(1, keepdims=True)
    z = (2.0 ** p - 2) / (2 ** N - 1)
    thr = np.array([l1_threshold(r, z) for r in wt]).reshape(c, tiles) * s[:, None]
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    hp, gp = h[perm][:, perm], g[perm][:, perm]
    dh = np.diag(hp).copy()
    dhi = np.where(dh != 0, 1 / np.where(dh != 0, dh, 1), 0).astype(np.float32)
    ds = np.diag(gp) * dhi
    lg, lh = np.tril(gp, -1) * dhi[:, None], np.tril(hp, -1) * dhi[:, None]
    q = np.zeros((c, k), np.float32)
    pos, neg = np.zeros((c, tiles)), np.zeros((c, tiles))
    a, nu = 2.0 ** (p - 1) - 1, 2 ** N - 1
    for t in range(k):
        i = perm[t]
        bx = i // tile
        v = ds[t] * w[:, i] + w[:, perm[:t]] @ lg[t, :t] - q[:, perm[:t]] @ lh[t, :t]
        v = np.sign(v) * np.maximum(np.abs(v) - thr[:, bx], 0)
        hi = (a - nu * pos[:, bx]) / nu - 0.5
        lo = (-a - nu * neg[:, bx]) / nu + 0.5
        v = np.clip(v, s * np.minimum(lo, 0), s * np.maximum(hi, 0))
        code = np.clip(np.round(v / s), -qmax, qmax)
        q[:, i] = code * s
        pos[:, bx] += np.where(code > 0, code, 0)
        neg[:, bx] += np.where(code < 0, code, 0)
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    return np.linalg.norm(y - xq.astype(np.float64) @ q.T.astype(np.float64)) / np.linalg.norm(y)


def main(dump):
    ours, shapes = {}, {}
    for line in open(f"{dump}/axeq_gpfq.tsv"):  # layer, config, error, D, K, C
        name, cfg, err, d, k, c = line.rstrip("\n").split("\t")
        ours[(name, cfg)] = float(err)
        shapes[name] = (int(d), int(k), int(c))
    print("| layer | accumulator | axeq GPFQ+AXE | reference, act-order | axeq / reference | reference, natural order |")
    print("|---|---|---|---|---|---|")
    for name in LAYERS:
        d, k, c = shapes[name]
        x = np.fromfile(f"{dump}/{name}.x.f32", np.float32).reshape(d, k)
        xq = np.fromfile(f"{dump}/{name}.xq.f32", np.float32).reshape(d, k)
        w = np.fromfile(f"{dump}/{name}.w.f32", np.float32).reshape(c, k)
        for label, tile, p in CONFIGS:
            ref = a2gpfq(x, xq, w, tile, p, True)
            nat = a2gpfq(x, xq, w, tile, p, False)
            mine = ours[(name, label)]
            print(f"| {name} | {label} | {mine:.4f} | {ref:.4f} | {mine / ref:.3f}x | {nat:.4f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
