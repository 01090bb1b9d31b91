#!/usr/bin/env python3
"""Run what was certified: stories260K quantized W4A8 through axeq-server, then run with exact
integer arithmetic in P-bit accumulators (axeq.torch, mode="integer"), wrapping and saturating.

Methods: (a) OPTQ base, (b) OPTQ+AXE, (c) GPFQ+AXE, (d) EP-init (OPTQ); datapaths: monolithic
P in {16, 14, 12} and tiles of T = 32 with P_I = 13 (outer P_O of Eq. 21: 14 for K = 64, 16 for
K = 172). AXE and EP-init are quantized for each datapath; the base once. One JSON object per row:
name, accumulator_bits, tile_size, overflow_mode, certificate_safe, overflows, ppl_fake,
ppl_integer, kld_integer (mean KL(fake || integer) of the next-token distributions, nats).

  /usr/bin/python3 examples/integer_inference.py [--server HOST:PORT] --json OUT [--svg PLOT.svg]

Without --server it starts $AXEQ_BUILD_DIR/server/axeq-server (default build/) on a free port."""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AXEQ_BUILD_DIR", os.path.join(ROOT, "build"))
sys.path[:0] = [os.path.join(BUILD, "python")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from axeq import Client, Config  # noqa: E402
from axeq.llama import Tokenizer, load_llama2c  # noqa: E402
from axeq.pipeline import quantize_model  # noqa: E402
from axeq.torch import apply_result, overflow_counters, quant_linears, set_datapath  # noqa: E402

TILE, TILE_P = 32, 13
DATAPATHS = [(16, 0), (14, 0), (12, 0), (TILE_P, TILE)]
METHODS = [("OPTQ base", dict(method="base")), ("OPTQ+AXE", dict(method="axe")),
           ("GPFQ+AXE", dict(algorithm="gpfq", method="axe")), ("EP-init", dict(method="ep-init"))]


@torch.no_grad()
def evaluate(model, tokens, window=512, reference=None):
    """(perplexity, per-window log-probabilities, mean KL(reference || model)) over windows of
    `window` tokens overlapping by one (every token after BOS predicted once)."""
    nll, n, kl, logps = 0.0, 0, 0.0, []
    for i, s in enumerate(range(0, len(tokens) - 1, window - 1)):
        chunk = tokens[s:s + window]
        if len(chunk) < 2:
            break
        logp = F.log_softmax(model(torch.tensor([chunk]))[0, :-1].double(), dim=-1)
        target = torch.tensor(chunk[1:])
        nll -= float(logp.gather(1, target[:, None]).sum())
        n += len(chunk) - 1
        if reference is not None:
            kl += float((reference[i].exp() * (reference[i] - logp)).sum())
        logps.append(logp)
    return math.exp(nll / n), logps, kl / n


def start_server(address):
    if address:
        return None, address
    proc = subprocess.Popen([os.path.join(BUILD, "server", "axeq-server"), "--address", "127.0.0.1:0", "--insecure",
                             "--drain-delay-seconds", "0"], stderr=subprocess.PIPE, text=True)
    port = json.loads(proc.stderr.readline())["port"]
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, f"127.0.0.1:{port}"


def run_method(client, ckpt, batches, evaluation, name, kw, datapaths, quantized_for):
    """Quantizes (once per datapath in quantized_for, else once) and evaluates fake and integer."""
    rows = []
    model = None
    for p, t in datapaths:
        if model is None or quantized_for:
            model = load_llama2c(ckpt)
            cfg = Config(accumulator_bits=p, tile_size=t, **kw)
            res = quantize_model(model, batches, client, cfg, groups=model.linear_groups(),
                                 smooth_pairs=model.smooth_pairs(), progress=False)
            apply_result(model, res, mode="fake")
            ppl_fake, ref, _ = evaluate(model, evaluation)
        for overflow in ("wrap", "saturate"):
            set_datapath(model, mode="integer", accumulator_bits=p, tile_size=t, overflow=overflow)
            ppl_int, _, kld = evaluate(model, evaluation, reference=ref)
            counters = overflow_counters(model).values()
            rows.append({"name": name, "accumulator_bits": p, "tile_size": t, "overflow_mode": overflow,
                         "certificate_safe": all(q.certified for q in quant_linears(model).values()),
                         "overflows": sum(c["overflow_events"] for c in counters),
                         "overflowing_dot_products": sum(c["overflowing_dot_products"] for c in counters),
                         "dot_products": sum(c["dot_products"] for c in counters),
                         "ppl_fake": ppl_fake, "ppl_integer": ppl_int, "kld_integer": kld})
            r = rows[-1]
            print(f"{name:<10} P={p:<2} T={t or '-':<3} {overflow:<8} certified={str(r['certificate_safe']):<5} "
                  f"overflows={r['overflows']:<9} ppl fake {ppl_fake:9.2f} integer {ppl_int:11.2f} "
                  f"KLD {kld:.4f}", flush=True)
        set_datapath(model, mode="fake")
    return rows


def plot(rows, path):
    """ppl_integer vs monolithic P per method (wrap solid, saturate dashed; log scale) as SVG."""
    w, h, left, top, right, bottom = 640, 400, 70, 30, 150, 50
    ps = [16, 14, 12]
    vals = [r["ppl_integer"] for r in rows if r["tile_size"] == 0] + [r["ppl_fake"] for r in rows]
    lo, hi = math.log10(min(vals)) - 0.05, math.log10(max(vals)) + 0.05
    x = lambda p: left + (16 - p) / 4 * (w - left - right)
    y = lambda v: top + (hi - math.log10(v)) / (hi - lo) * (h - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18">stories260K W4A8: perplexity with P-bit integer accumulators</text>',
           f'<text x="14" y="{(h - bottom + top) / 2}" transform="rotate(-90 14 {(h - bottom + top) / 2})">perplexity (log scale)</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
           f'<text x="{(w - right) / 2}" y="{h - 12}">accumulator bits P (monolithic)</text>']
    for p in ps:
        out.append(f'<text x="{x(p) - 6}" y="{h - bottom + 16}">{p}</text>')
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        out.append(f'<text x="{left - 40}" y="{y(10 ** e) + 4}">1e{e}</text>'
                   f'<line x1="{left}" y1="{y(10 ** e)}" x2="{w - right}" y2="{y(10 ** e)}" stroke="#ddd"/>')
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"]
    for i, (name, _) in enumerate(METHODS):
        for mode, dash in (("wrap", ""), ("saturate", ' stroke-dasharray="5,4"')):
            pts = [(x(r["accumulator_bits"]), y(r["ppl_integer"])) for r in rows
                   if r["name"] == name and r["tile_size"] == 0 and r["overflow_mode"] == mode]
            out.append(f'<polyline fill="none" stroke="{colors[i]}" stroke-width="2"{dash} points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        ly = top + 20 * i
        out.append(f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 35}" y2="{ly}" stroke="{colors[i]}" stroke-width="2"/>'
                   f'<text x="{w - right + 40}" y="{ly + 4}">{name}</text>')
    out.append(f'<text x="{w - right + 10}" y="{top + 100}">solid: wrap</text>'
               f'<text x="{w - right + 10}" y="{top + 116}">dashed: saturate</text></svg>')
    with open(path, "w") as f:
        f.write("\n".join(out))
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "-o", path[:-4] + ".png", path], check=False)


def table(rows) -> str:
    out = ["| method | P | T | register | certified | overflows | ppl fake | ppl integer | KLD |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['accumulator_bits']} | {r['tile_size'] or '-'} | {r['overflow_mode']} | "
                   f"{'yes' if r['certificate_safe'] else 'no'} | {r['overflows']:,} | {r['ppl_fake']:.2f} | "
                   f"{r['ppl_integer']:.2f} | {r['kld_integer']:.4f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server")
    ap.add_argument("--json", required=True)
    ap.add_argument("--svg")
    ap.add_argument("--data", default=os.environ.get("AXEQ_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data")))
    ap.add_argument("--eval-tokens", type=int, default=511, help="WikiText-2 test tokens to evaluate on")
    ap.add_argument("--batches", type=int, default=4, help="calibration sequences")
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    torch.manual_seed(0)
    ckpt = os.path.join(ROOT, "examples", "data", "stories260K.bin")
    tok = Tokenizer(os.path.join(ROOT, "examples", "data", "tok512.bin"), 512)
    text = open(os.path.join(a.data, "wikitext-2", "wiki.test.raw.txt"), encoding="utf-8").read()
    evaluation = tok.encode(text[:20000])[:a.eval_tokens + 1]
    calib = tok.encode(text[200000:200000 + 8 * a.seq * a.batches], bos=False)
    batches = [torch.tensor([[1] + calib[i * a.seq:(i + 1) * a.seq]]) for i in range(a.batches)]
    print(f"stories260K W4A8; evaluation: the first {len(evaluation) - 1} WikiText-2 test tokens; calibration: "
          f"{a.batches} x {a.seq} tokens from character 200,000 on", flush=True)
    print(f"float model perplexity: {evaluate(load_llama2c(ckpt), evaluation)[0]:.2f}", flush=True)
    proc, address = start_server(a.server)
    t0, rows = time.time(), []
    try:
        with Client(address, deadline=600) as client:
            for name, kw in METHODS:
                rows += run_method(client, ckpt, batches, evaluation, name, kw, DATAPATHS, kw["method"] != "base")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=1)
    if a.svg:
        plot(rows, a.svg)
    print(table(rows))
    print(f"{len(rows)} rows in {time.time() - t0:.0f} s -> {a.json}")
    bad = [r for r in rows if r["certificate_safe"] and (r["overflows"] or abs(r["ppl_integer"] / r["ppl_fake"] - 1) > 1e-4)]
    if bad:
        sys.exit(f"certified rows that overflowed or changed perplexity: {bad}")


if __name__ == "__main__":
    main()
