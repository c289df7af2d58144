#!/usr/bin/env python3
"""PyTorch eager CPU training of the model `taylor-calibrate bench --suite train` trains on the CPU, for the
comparison in that suite: a 4-layer Llama-style decoder, D 256, 8 query heads on 4 kv heads (GQA) of 32,
SwiGLU width 688, vocabulary 2048, untied head (3.95 M parameters), B 8, T 256, cross-entropy on next
tokens, AdamW (lr 1e-3, weight decay 0.01, clip 1.0), fp32, 2 threads. Prints tokens/s (median step).

    python3 tools/torch-train-bench.py [--threads 2] [--steps 8] [--batch 8] [--seq 256]

Needs only torch (Debian: python3-torch). Written from the formulas of docs/training.md, not from any
model library, so both sides train the same computation.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F


class RmsNorm(torch.nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope_tables(T, hd, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, hd // 2, dtype=torch.float64) * 2.0 / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def rope(x, cos, sin):
    # Half-split pairing: (x_i, x_{i+hd/2}) rotate together. x: (B, heads, T, hd).
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Block(torch.nn.Module):
    def __init__(self, d, heads, kv_heads, hd, ffn):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.attn_norm = RmsNorm(d)
        self.q = torch.nn.Linear(d, heads * hd, bias=False)
        self.k = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.v = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.o = torch.nn.Linear(heads * hd, d, bias=False)
        self.mlp_norm = RmsNorm(d)
        self.gate = torch.nn.Linear(d, ffn, bias=False)
        self.up = torch.nn.Linear(d, ffn, bias=False)
        self.down = torch.nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        xn = self.attn_norm(x)
        q = self.q(xn).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k(xn).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v(xn).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        g = self.heads // self.kv_heads
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        # Explicit causal softmax attention: scaled_dot_product_attention needs torch ≥ 2.0, Debian ships 1.13.
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, self.heads * self.hd))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Decoder(torch.nn.Module):
    def __init__(self, vocab=2048, d=256, layers=4, heads=8, kv_heads=4, hd=32, ffn=688):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList([Block(d, heads, kv_heads, hd, ffn) for _ in range(layers)])
        self.norm = RmsNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.hd = hd

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = rope_tables(T, self.hd)
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.head(self.norm(x))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = Decoder()
    params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ids = (torch.arange(a.batch * (a.seq + 1)) * 7919 + 13).remainder(2048).view(a.batch, a.seq + 1)
    x, y = ids[:, :-1], ids[:, 1:]
    times = []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x).reshape(-1, 2048), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step > 0:  # the first step warms up allocations
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    tokens = a.batch * a.seq
    print(f"torch {torch.__version__}, {a.threads} threads, {params / 1e6:.2f} M parameters, B={a.batch} T={a.seq}: "
          f"median step {s:.3f} s, {tokens / s:.0f} tokens/s (loss {loss.item():.3f})")


if __name__ == "__main__":
    main()
