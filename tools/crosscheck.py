#!/usr/bin/env python3
"""Cross-checks `taylor-calibrate op` against NumPy in float64 (an independent framework).

For each case it writes random inputs to a safetensors file, runs the CLI on a device, reads the outputs and
compares them with NumPy float64: matmul directly; attention with an explicit softmax; the gated delta rule
with the token-by-token recurrence; every gradient by central finite differences of the float64 forward
(no hand-written derivative is shared with the project). Error metric: relative RMS ‖ref − out‖/‖ref‖.

usage: tools/crosscheck.py CLI_DLL --device cpu|vulkan:llvmpipe [--json FILE] [--ops matmul,attention,gdn]
Needs python3-numpy (Debian) — nothing else. Exit code 1 if a case exceeds its tolerance.
"""
import argparse, json, os, struct, subprocess, sys, tempfile
import numpy as np

# ---- safetensors (the format is an 8-byte header length, a JSON header, raw little-endian data) -----
def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = {np.float32: "F32", np.int32: "I32"}[arr.dtype.type]
        b = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs: f.write(b)

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n)); data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__": continue
        b, t = e["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32}[e["dtype"]]
        out[name] = np.frombuffer(data[b:t], dtype=dt).reshape(e["shape"])
    return out

def run_op(cli, device, op, inputs, flags, workdir):
    inp, outp = os.path.join(workdir, f"{op}-in.safetensors"), os.path.join(workdir, f"{op}-out.safetensors")
    write_safetensors(inp, inputs)
    if os.path.exists(outp): os.remove(outp)
    r = subprocess.run(["dotnet", cli, "op", op, "--inputs", inp, "--out", outp, "--device", device] + flags,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"op {op} failed ({r.returncode}): {r.stderr.strip()}")
    return read_safetensors(outp)

def rel_rms(ref, out):
    ref = np.asarray(ref, np.float64); out = np.asarray(out, np.float64)
    den = np.sqrt(np.mean(ref ** 2))
    return float(np.sqrt(np.mean((ref - out) ** 2)) / (den if den > 0 else 1.0))

def fd_grad(f, x, h=1e-6):
    """Central finite differences of the scalar f at x (float64): error O(h²) + O(eps/h) ≈ 1e-9."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h; fp = f()
        flat[i] = old - h; fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g

# ---- references -------------------------------------------------------------------------------------
def attention_ref(q, k, v, scale):
    B, T, H, D = q.shape; Hkv = k.shape[2]; g = H // Hkv
    o = np.zeros((B, T, H, D)); lse = np.zeros((B, H, T))
    mask = np.tril(np.ones((T, T), bool))
    for b in range(B):
        for h in range(H):
            s = scale * q[b, :, h] @ k[b, :, h // g].T
            s = np.where(mask, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            p = np.exp(s - m); l = p.sum(axis=1, keepdims=True)
            o[b, :, h] = (p / l) @ v[b, :, h // g]
            lse[b, h] = (m + np.log(l))[:, 0]
    return o, lse

def attention_stats_ref(q, k, scale):
    """Per head: mean over rows of Σ_j A_ij·max(i−j, 0.5) and of −Σ_j A_ij ln A_ij (docs/method.md §5.1)."""
    B, T, H, D = q.shape; Hkv = k.shape[2]; g = H // Hkv
    dist = np.maximum(np.arange(T)[:, None] - np.arange(T)[None, :], 0.5)
    md, ent = np.zeros((B, H)), np.zeros((B, H))
    mask = np.tril(np.ones((T, T), bool))
    for b in range(B):
        for h in range(H):
            s = np.where(mask, scale * q[b, :, h] @ k[b, :, h // g].T, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True)); p /= p.sum(axis=1, keepdims=True)
            md[b, h] = (np.where(mask, p * dist, 0)).sum(axis=1).mean()
            ent[b, h] = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=1).mean()
    return md, ent

def gdn_ref(q, k, v, g, beta, h0, scale, l2norm):
    B, T, H, K = q.shape; V = v.shape[3]
    if l2norm:
        q = q / np.sqrt((q ** 2).sum(-1, keepdims=True) + 1e-6)
        k = k / np.sqrt((k ** 2).sum(-1, keepdims=True) + 1e-6)
    o = np.zeros((B, T, H, V)); ht = np.zeros((B, H, K, V))
    for b in range(B):
        for h in range(H):
            S = h0[b, h].copy() if h0 is not None else np.zeros((K, V))
            for t in range(T):
                S = np.exp(g[b, t, h]) * S
                u = beta[b, t, h] * (v[b, t, h] - S.T @ k[b, t, h])
                S = S + np.outer(k[b, t, h], u)
                o[b, t, h] = scale * S.T @ q[b, t, h]
            ht[b, h] = S
    return o, ht

# ---- cases ------------------------------------------------------------------------------------------
def case_matmul(cli, device, wd, rng):
    results = []
    for (m, n, k) in [(1, 1, 1), (37, 53, 29), (130, 67, 259)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
                b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
                out = run_op(cli, device, "matmul", {"a": a, "b": b},
                             (["--trans-a"] if ta else []) + (["--trans-b"] if tb else []), wd)
                ref = (a.astype(np.float64).T if ta else a.astype(np.float64)) @ (b.astype(np.float64).T if tb else b.astype(np.float64))
                # fp32 dot products of K terms: relative RMS ≈ √K·2⁻²⁴ ≲ 1e-6 for K ≤ 259.
                results.append((f"matmul {m}x{n}x{k} ta={ta} tb={tb}", "c", rel_rms(ref, out["c"]), 2e-6))
    return results

def case_attention(cli, device, wd, rng):
    results = []
    for (B, T, H, Hkv, D) in [(1, 7, 4, 2, 8), (2, 33, 4, 1, 16)]:
        q, k, v = (rng.normal(0, 1, s).astype(np.float32) for s in [(B, T, H, D), (B, T, Hkv, D), (B, T, Hkv, D)])
        do = rng.normal(0, 1, (B, T, H, D)).astype(np.float32)
        scale = 1 / np.sqrt(D)
        out = run_op(cli, device, "attention", {"q": q, "k": k, "v": v, "do": do}, ["--backward", "--stats"], wd)
        q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
        o, lse = attention_ref(q64, k64, v64, scale)
        md, ent = attention_stats_ref(q64, k64, scale)
        name = f"attention B{B} T{T} H{H}/{Hkv} D{D}"
        # fp32 softmax attention against float64: ~1e-7 relative per element, a few × that after sums.
        results += [(name, "o", rel_rms(o, out["o"]), 1e-5), (name, "lse", rel_rms(lse, out["lse"]), 1e-5),
                    (name, "mean_distance", rel_rms(md, out["mean_distance"]), 1e-5), (name, "entropy", rel_rms(ent, out["entropy"]), 1e-5)]
        if B * T * H * D <= 7 * 4 * 8 + 1:  # FD is O(n²): only on the small case
            loss = lambda: float((attention_ref(q64, k64, v64, scale)[0] * do).sum())
            for nm, x in (("dq", q64), ("dk", k64), ("dv", v64)):
                # gradients: fp32 kernels (~1e-7·√T relative) vs float64 FD (error ~1e-9): 1e-5 leaves ~20x headroom.
                results.append((name, nm, rel_rms(fd_grad(loss, x), out[nm]), 1e-5))
    return results

def case_gdn(cli, device, wd, rng):
    results = []
    for (B, T, H, K, V, l2, withh0, mode) in [(1, 9, 2, 4, 4, True, True, "recurrent"), (1, 9, 2, 4, 4, True, True, "chunk"),
                                               (1, 70, 2, 8, 8, True, False, "chunk")]:
        q, k = (rng.normal(0, 1, (B, T, H, K)).astype(np.float32) for _ in range(2))
        v = rng.normal(0, 1, (B, T, H, V)).astype(np.float32)
        g = (-rng.uniform(1e-4, 2.0, (B, T, H))).astype(np.float32)
        beta = rng.uniform(0.05, 0.95, (B, T, H)).astype(np.float32)
        h0 = rng.normal(0, 1, (B, H, K, V)).astype(np.float32) if withh0 else None
        do = rng.normal(0, 1, (B, T, H, V)).astype(np.float32)
        dht = rng.normal(0, 1, (B, H, K, V)).astype(np.float32)
        scale = 1 / np.sqrt(K)
        inputs = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "do": do, "dht": dht}
        if withh0: inputs["h0"] = h0
        flags = ["--backward", "--mode", mode, "--chunk-size", "16"] + (["--l2norm-qk"] if l2 else [])
        out = run_op(cli, device, "gdn", inputs, flags, wd)
        x64 = {n: a.astype(np.float64) for n, a in inputs.items()}
        h064 = x64.get("h0")
        o, ht = gdn_ref(x64["q"], x64["k"], x64["v"], x64["g"], x64["beta"], h064, scale, l2)
        name = f"gdn {mode} T{T} H{H} K{K} V{V} l2={l2} h0={withh0}"
        results += [(name, "o", rel_rms(o, out["o"]), 1e-5), (name, "ht", rel_rms(ht, out["ht"]), 1e-5)]
        if T <= 9:
            def loss():
                o_, ht_ = gdn_ref(x64["q"], x64["k"], x64["v"], x64["g"], x64["beta"], x64.get("h0"), scale, l2)
                return float((o_ * x64["do"]).sum() + (ht_ * x64["dht"]).sum())
            for nm, src in (("dq", "q"), ("dk", "k"), ("dv", "v"), ("dg", "g"), ("dbeta", "beta")) + ((("dh0", "h0"),) if withh0 else ()):
                results.append((name, nm, rel_rms(fd_grad(loss, x64[src]), out[nm]), 1e-5))
    return results

CASES = {"matmul": case_matmul, "attention": case_attention, "gdn": case_gdn}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cli"); ap.add_argument("--device", default="cpu"); ap.add_argument("--json")
    ap.add_argument("--ops", default=",".join(CASES))
    a = ap.parse_args()
    rng = np.random.default_rng(20261129)
    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as wd:
        for op in a.ops.split(","):
            for case, tensor, err, tol in CASES[op](a.cli, a.device, wd, rng):
                ok = err < tol
                bad += not ok
                rows.append({"device": a.device, "case": case, "tensor": tensor, "rel_rms": err, "tolerance": tol, "ok": ok})
                print(f"{'ok  ' if ok else 'FAIL'} {a.device:16s} {case:48s} {tensor:13s} rel-RMS {err:.2e} (< {tol:.0e})")
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f: json.dump(rows, f, indent=1)
        os.replace(tmp, a.json)
    print(f"{len(rows) - bad} within tolerance, {bad} beyond")
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
