#!/usr/bin/env python3
"""stories260K end to end through axeq-server: a real pretrained Llama-2-architecture model,
calibrated on one slice of WikiText-2 test and evaluated on a disjoint one and on held-out
in-domain text sampled from the float model (fixed seed); every linear layer quantized block by
block through the service (the tied embedding/classifier stays float, as in the paper), every
certificate re-verified client-side against the configuration asked for.

  /usr/bin/python3 examples/stories260k.py [--server TARGET] [--quick] [--out docs/results-stories260k.md] [--json OUT]
  /usr/bin/python3 examples/stories260k.py --range-study 10 [--json OUT]   (activation-range methods
      on the base OPTQ and GPFQ rows over 10 calibration slices: docs/results-stories260k.md)

Without --server it starts $AXEQ_BUILD_DIR/server/axeq-server (default build/) on a free port;
the Python stubs are taken from $AXEQ_BUILD_DIR/python unless axeq is installed."""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.abspath(os.environ.get("AXEQ_BUILD_DIR") or os.path.join(ROOT, "build"))
sys.path[:0] = [os.path.join(BUILD, "python")]

import torch  # noqa: E402

from axeq import Client, Config  # noqa: E402
from axeq.llama import Tokenizer, fidelity, greedy, load_llama2c, log_probs, perplexity, sample  # noqa: E402
from axeq.memo import keep_freed_memory  # noqa: E402
from axeq.pipeline import quantize_model  # noqa: E402

# T = 32 for both K = 64 (attention, w1, w3) and K = 172 (w2): a power of two that splits every
# dot product (2 and 6 tiles; T = 64 would leave the K = 64 layers monolithic). By Eq. 21,
# P_O = P_I + 1 (K = 64) or P_I + 3 (K = 172), so P_I = P - 3 gives a whole datapath (inner and
# outer registers) of at most P bits, comparable with the monolithic row at the same P.
TILE = 32
TILE_OUTER_GROWTH = 3
# In-domain text sampled from the float model. 64 x 127 predicted positions: the standard error of a
# row's mean KL over the sequences is ~0.004 at W4A8 (8 sequences: ~0.01, as large as the differences
# between range methods); docs/results-stories260k.md.
HELD_OUT = dict(n=64, length=128, seed=20261127)
HELD_OUT_QUICK = dict(n=4, length=128, seed=20261127)  # CI: sample() costs ~2 s per sequence on the reference BLAS
CALIBRATION_OFFSET = 200000  # characters into WikiText-2 test (the first 20,000 are the evaluation text)
RANGE_METHODS = ("auto", "output", "mse", "percentile", "minmax")


def configs(quick, act_range="auto"):
    """(name, Config) rows; act_range is the activation range method of every row but the two
    that compare range methods on the base algorithm."""
    out = [("W8A8, P=32 (OPTQ)", Config(weight_bits=8, input_bits=8, accumulator_bits=32, method="base")),
           ("W4A8 OPTQ (base)", Config(method="base")),
           ("W4A8 GPFQ (base)", Config(algorithm="gpfq", method="base"))]
    for p in ([16] if quick else [16, 18, 20]):
        out += [(f"W4A8 OPTQ+AXE, P={p}", Config(accumulator_bits=p)),
                (f"W4A8 OPTQ+AXE, T={TILE}, P_I={p - TILE_OUTER_GROWTH} (P_O<={p})",
                 Config(accumulator_bits=p - TILE_OUTER_GROWTH, tile_size=TILE)),
                (f"W4A8 GPFQ+AXE, P={p}", Config(algorithm="gpfq", accumulator_bits=p)),
                (f"naive bit widths, P={p}", Config(method="naive", accumulator_bits=p)),
                (f"EP-init (OPTQ), P={p}", Config(method="ep-init", accumulator_bits=p))]
    for _, c in out:
        c.act_range = act_range
    if quick:
        return [o for o in out if "T=" not in o[0] and "GPFQ" not in o[0] and "base" not in o[0]]
    others = [m for m in ("output", "mse", "percentile", "minmax") if m != act_range]
    return out[:2] + [(f"W4A8 OPTQ (base), {m} ranges", Config(method="base", act_range=m)) for m in others] + out[2:]


def start_server():
    """Starts the build tree's axeq-server on a free loopback port; returns (process, target)."""
    binary = os.path.join(BUILD, "server", "axeq-server")
    if not os.path.exists(binary):
        sys.exit(f"{binary} not found: build it (cmake --build {BUILD} --target axeq-server), "
                 "set AXEQ_BUILD_DIR, or pass --server")
    proc = subprocess.Popen([binary, "--address", "127.0.0.1:0", "--insecure", "--drain-delay-seconds", "0"],
                            stderr=subprocess.PIPE, text=True)
    target = f"127.0.0.1:{json.loads(proc.stderr.readline())['port']}"
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the log
    return proc, target


def differs(res, base) -> float:
    """Fraction of codes that differ from the base algorithm's (None without a base row)."""
    if not base:
        return None
    return sum(int((r.codes != base[n].codes).sum()) for n, r in res.items()) / sum(r.codes.size for r in res.values())


def evaluate(model, name, res, cfg, seconds, data):
    """One table row: WikiText-2 perplexity, fidelity on the sampled text, sparsity, certificates."""
    row = {"name": name, "ppl": perplexity(model, data["evaluation"]), "seconds": round(seconds, 3)}
    row.update(fidelity(model, data["held_out"], data["reference"]))
    if res is None:
        return dict(row, sparsity=0.0, verified="-", min_po="-", bits="-", layers=0)
    verdicts = [r.verify(cfg) for r in res.values()]
    ok, safe = all(v.consistent for v in verdicts), all(v.safe for v in verdicts)
    zeros, total = sum(int((r.codes == 0).sum()) for r in res.values()), sum(r.codes.size for r in res.values())
    return dict(row, sparsity=zeros / total, verified=("all SAFE" if safe else "UNSAFE") if ok else "MISMATCH",
                min_po=max(r.certificate["min_outer_accumulator_bits"] for r in res.values()),
                bits=sorted({(r.report["weight_bits"], r.report["input_bits"]) for r in res.values()}),
                layers=len(res), timings={k: round(v, 3) for k, v in res.timings.items()})


def print_row(r):
    print(f"{r['name']:<36} ppl {r['ppl']:8.2f}  KL {r['kld']:.4f}  top-1 {r['top1_agreement']:5.1f}%  "
          f"ppl ratio {r['ppl_ratio']:.4f}  sparsity {r['sparsity']:.3f}  {r['verified']:<8} "
          f"min P_O {r['min_po']}  W/A {r['bits']}  ({r['seconds']:.1f} s)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="gRPC target of a running axeq-server (default: start one)")
    ap.add_argument("--data", default=os.environ.get("AXEQ_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data")))
    ap.add_argument("--quick", action="store_true", help="4 batches and the P=16 configurations (CI)")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--upload", choices=("statistics", "rows"), default="statistics")
    ap.add_argument("--act-range", choices=RANGE_METHODS, default="auto")
    ap.add_argument("--range-study", type=int, metavar="SETS",
                    help="instead of the table: KL of the base OPTQ/GPFQ rows per range method over SETS "
                         "calibration slices 100,000 characters apart (paired differences to auto)")
    ap.add_argument("--only", help="run only these configurations: exact names separated by |")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--json", help="write one JSON object per row here")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch and OpenBLAS threads (default 1: this model's kernels are too small to "
                         "share, and the server needs the other core; docs/pipeline-benchmarks.md)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)  # fixed, so that every figure is reproducible
    set_openblas_threads(a.threads)  # its own pool: the figures' last bits depend on its split too
    keep_freed_memory()  # the pipeline's passes reuse freed buffers instead of faulting in new pages
    ckpt = os.path.join(a.data, "stories260K", "stories260K.bin")
    if not os.path.exists(ckpt):
        ckpt = os.path.join(ROOT, "examples", "data", "stories260K.bin")
    tok = Tokenizer(os.path.join(os.path.dirname(ckpt), "tok512.bin"), 512)
    text = open(os.path.join(a.data, "wikitext-2", "wiki.test.raw.txt"), encoding="utf-8").read()
    model = load_llama2c(ckpt)
    story = tok.decode(greedy(model, 20))
    assert story.startswith("Once upon a time, there was a little girl named Lily."), story
    # Evaluation: the first 2,044 tokens (+BOS). Calibration: from character 200,000 on (disjoint).
    nb = 4 if a.quick else a.batches
    batches = calibration(tok, text, CALIBRATION_OFFSET, nb, a.seq)
    held = a.held = HELD_OUT_QUICK if a.quick else HELD_OUT
    held_out = sample(model, **held)
    data = {"evaluation": tok.encode(text[:20000])[:2045], "held_out": held_out, "reference": log_probs(model, held_out)}
    rows = [evaluate(model, "float", None, None, 0.0, data)]
    print(f"calibration: {nb} x {a.seq} WikiText-2 tokens from char 200,000 on; held-out: {held}")
    print_row(rows[0])
    proc, target = start_server() if not a.server else (None, a.server)
    try:
        with Client(target, deadline=600) as client:
            if a.range_study:
                return range_study(a, client, ckpt, tok, text, data)
            bases = {}  # algorithm -> the base algorithm's results (same activation ranges)
            for name, cfg in configs(a.quick, a.act_range):
                if a.only and name not in a.only.split("|"):
                    continue
                m = load_llama2c(ckpt)
                t0 = time.time()
                res = quantize_model(m, batches, client, cfg, smooth_pairs=m.smooth_pairs(), upload=a.upload,
                                     progress=False)
                rows.append(evaluate(m, name, res, cfg, time.time() - t0, data))
                if name in ("W4A8 OPTQ (base)", "W4A8 GPFQ (base)"):
                    bases[cfg.algorithm] = res
                if cfg.weight_bits == 4 and cfg.act_range == a.act_range and "naive" not in name:
                    rows[-1]["differs_from_base"] = differs(res, bases.get(cfg.algorithm))
                print_row(rows[-1])
                write_outputs(a, rows, nb)  # after every row: a long run that stops keeps its rows
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
    write_outputs(a, rows, nb)
    return rows


def calibration(tok, text, offset, n, seq):
    """n sequences of seq WikiText-2 test tokens (BOS first) from character `offset` on."""
    calib = tok.encode(text[offset:offset + 40 * seq * 4], bos=False)
    return [torch.tensor([[1] + calib[i * seq:(i + 1) * seq]]) for i in range(n)]


def range_study(a, client, ckpt, tok, text, data):
    """KL to float of the base OPTQ and GPFQ rows per activation-range method, on calibration slices
    CALIBRATION_OFFSET + 100,000 k: one slice's differences between methods are mostly chance (a
    last-bit change upstream moves a row's KL by ~0.01), their mean over slices is the method's."""
    kl = {}
    for k in range(a.range_study):
        batches = calibration(tok, text, CALIBRATION_OFFSET + 100000 * k, a.batches, a.seq)
        for alg in ("optq", "gpfq"):
            for method in RANGE_METHODS:
                m = load_llama2c(ckpt)
                quantize_model(m, batches, client, Config(algorithm=alg, method="base", act_range=method),
                               smooth_pairs=m.smooth_pairs(), upload=a.upload, progress=False)
                kl[alg, method, k] = fidelity(m, data["held_out"], data["reference"])["kld"]
                print(f"slice {k} {alg} {method}: KL {kl[alg, method, k]:.4f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"algorithm": g, "act_range": m, "slice": k, "kld": v} for (g, m, k), v in kl.items()], f, indent=1)
    n = a.range_study
    print(f"\n| range | OPTQ KL (mean of {n}) | - auto (+- SE) | worse than auto | "
          f"GPFQ KL (mean of {n}) | - auto (+- SE) | worse than auto |\n|---|---|---|---|---|---|---|")
    for method in RANGE_METHODS:
        cells = []
        for alg in ("optq", "gpfq"):
            v = torch.tensor([kl[alg, method, k] for k in range(n)], dtype=torch.float64)
            d = v - torch.tensor([kl[alg, "auto", k] for k in range(n)], dtype=torch.float64)
            se = float(d.std() / n ** 0.5) if n > 1 else float("nan")
            cells += [f"{float(v.mean()):.4f}", "-" if method == "auto" else f"{float(d.mean()):+.4f} +- {se:.4f}",
                      "-" if method == "auto" else f"{int((d > 0).sum())}/{n}"]
        print(f"| {method} | " + " | ".join(cells) + " |")
    return kl


def write_outputs(a, rows, nb):
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.out:
        write_markdown(a, rows, nb)


METHOD = """Model: Karpathy's stories260K (Llama-2 architecture, dim 64, hidden 172, 5 blocks), loaded into the
PyTorch module of `client/python/axeq/llama.py` (greedy story checked).
Calibration: {nb} sequences of {seq} tokens of WikiText-2 test from character 200,000 on.
Evaluation, two ways:
- WikiText-2 perplexity on the first 2,044 test tokens (tok512, BOS prepended, windows of 512
  overlapping by one token; disjoint from calibration). Out of the model's domain (children's stories):
  a reference point, noisy at the ~1 point level.
- Fidelity to the float model on in-domain held-out text: {n} sequences of {length} tokens sampled from
  the float model (temperature 1, torch generator seed {seed}): mean KL divergence of the quantized
  model's next-token distribution from the float model's (nats), top-1 agreement (% of positions where
  both rank the same token first) and perplexity ratio (quantized / float) on that text, as llama.cpp's
  `perplexity --kl-divergence` reports them.
Pipeline (`axeq.pipeline.quantize_model`): block by block (first block's inputs caught once, float and
quantized streams carried block to block), true-sequential inside each block (q/k/v, then o, then
w1/w3, then w2; layers of a group quantized concurrently), SmoothQuant alpha = 0.4 folded into the
RMSNorms, per-tensor static 8-bit unsigned activations with {ranges},
{upload} uploads (float64 on the client), bias correction on the server (no biases in this model). All
35 linear layers go through a running axeq-server; the tied embedding/classifier stays float.
Tiles: T = {tile} (2 tiles for K = 64, 6 for K = 172) with P_I = P - {growth}, so that the outer
accumulator of Eq. 21 (P_I + 1 for K = 64, P_I + 3 for K = 172) stays within P bits too.
Certificates: every one re-verified by the Python client's independent verifier, pinned to the P, T,
N and M the configuration asked for. Codes != base: the fraction of integer codes that differ from the
base algorithm's row (same algorithm and activation ranges); 0 means the constraint never bound and the
row must score exactly as the base. Seconds: wall time of the pipeline for the configuration.
"""


def loaded_blas() -> list[str]:
    """Paths of the BLAS/LAPACK libraries this process has mapped (empty if /proc is unreadable)."""
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f if "blas" in line.split()[-1]})
    except OSError:
        return []


def set_openblas_threads(n: int) -> bool:
    """OpenBLAS (when it is the libblas.so.3 numpy and torch loaded) keeps its own thread pool, which
    torch.set_num_threads does not reach: with 2 threads on 2 shared cores each small product waits for
    a descheduled thread (stories260K row: 4.7 s vs 2.5 s at load 3), and the split changes the
    statistics' last bits. Sets it to n threads; False when no OpenBLAS is loaded."""
    path = next((p for p in loaded_blas() if "libopenblas" in os.path.basename(p)), None)
    if path is None:
        return False
    ctypes.CDLL(path).openblas_set_num_threads(int(n))
    return True


def blas() -> str:
    """The BLAS library this process loaded (the figures' last bits depend on it)."""
    libs = [os.path.relpath(p, "/usr/lib/x86_64-linux-gnu") if "x86_64" in p else os.path.basename(p)
            for p in loaded_blas()]
    return ", ".join(libs) or "BLAS unknown"


def write_markdown(a, rows, nb):
    with open(a.out, "w") as f:
        f.write("# stories260K quantized through axeq-server\n\n")
        f.write(f"Produced by `/usr/bin/python3 examples/stories260k.py --out {a.out}` ({time.strftime('%Y-%m-%d')}, "
                f"{a.threads} PyTorch thread(s), {blas()}, one local axeq-server).\n\n")
        ranges = (f"the range fitted by `{a.act_range}` on X~" if a.act_range != "auto" else
                  "ranges by `auto` (the default): each group of layers\nquantized with each distinct range among "
                  "`output`, min/max and percentile of X~, and the one\nwhose block output is closest to the "
                  "float block's kept")
        f.write(METHOD.format(nb=nb, seq=a.seq, tile=TILE, growth=TILE_OUTER_GROWTH, ranges=ranges,
                              upload=a.upload, **a.held))
        f.write("\n| configuration | WikiText-2 ppl | KL to float | top-1 agree | ppl ratio | weight sparsity "
                "| codes != base | certificates | min P_O | W/A bits | seconds |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            d = r.get("differs_from_base")
            f.write(f"| {r['name']} | {r['ppl']:.2f} | {r['kld']:.4f} | {r['top1_agreement']:.1f}% | {r['ppl_ratio']:.4f} "
                    f"| {r['sparsity']:.3f} | {'-' if d is None else f'{d:.4f}'} | {r['verified']} | {r['min_po']} "
                    f"| {r['bits']} | {r['seconds']:.1f} |\n")


if __name__ == "__main__":
    main()
