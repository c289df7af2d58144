/// `bench --suite attention` and `--suite gdn`: tokens/s of the sequence mixers, forward and
/// forward+backward, at T = 512, 2048, 8192 for B = 1 with (H 8, head 64) and an LLM-like (H 16, head 128);
/// GDN in both forms (chunked, token-recurrent). GFLOP/s count each form's own useful work:
/// - attention (causal): forward 2·H·T²·D (QKᵀ and PV over the lower triangle), backward 2.5× that;
/// - GDN recurrent: per token and head decay K·V, Sᵀk 2KV, rank-1 update 2KV, read-out 2KV = 7KV forward;
///   backward ≈ 2× forward (docs/kernels.md §3.1: it recomputes the states and runs the transposed products);
/// - GDN chunked (chunk C): per token and head KKᵀ C·K, (I+L)⁻¹ C²/3, w and u 2C(K+V), the inter-chunk
///   products v_new, state update and Q·h 6KV, intra-chunk QKᵀ and ·v_new C(K+V) forward; backward ≈ 2.5×.
module TaylorCalibrate.Pipeline.Bench.SequenceSuite

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Bench.BenchCore

type private Shape = { T: int; H: int; D: int }

let private shapes quick =
    if quick then [ for t in [ 128; 512 ] -> { T = t; H = 8; D = 64 } ]
    else [ for hd in [ (8, 64); (16, 128) ] do for t in [ 512; 2048; 8192 ] -> { T = t; H = fst hd; D = snd hd } ]

let private random (seed: int) (n: int) (lo: float32) (hi: float32) =
    let r = Random seed
    Array.init n (fun _ -> lo + (hi - lo) * float32 (r.NextDouble()))

let private record suite (be: IBackend) case (s: Shape) seconds flops =
    { Suite = suite; Device = be.Name; Case = case; M = None; N = None; K = None
      Seconds = seconds; Gflops = Some(flops / seconds / 1e9); TokensPerSecond = Some(float s.T / seconds) }

/// Attention forward and forward+backward (GQA 2:1, as in Llama-style teachers).
let runAttention (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    [ for s in shapes opts.Quick do
        let hkv = s.H / 2
        use q = be.FromArray(random 1 (s.T * s.H * s.D) -1.0f 1.0f, 1, s.T, s.H, s.D)
        use k = be.FromArray(random 2 (s.T * hkv * s.D) -1.0f 1.0f, 1, s.T, hkv, s.D)
        use v = be.FromArray(random 3 (s.T * hkv * s.D) -1.0f 1.0f, 1, s.T, hkv, s.D)
        use dO = be.FromArray(random 4 (s.T * s.H * s.D) -1.0f 1.0f, 1, s.T, s.H, s.D)
        use o = be.Allocate [| 1; s.T; s.H; s.D |]
        use lse = be.Allocate [| 1; s.H; s.T |]
        use dq = be.Allocate q.Shape
        use dk = be.Allocate k.Shape
        use dv = be.Allocate v.Shape
        let scale = 1.0f / sqrt (float32 s.D)
        let fwdFlops = 2.0 * float s.H * float s.T * float s.T * float s.D
        let name = $"T={s.T} H={s.H} Hkv={hkv} D={s.D}"
        let fwd = measure be opts (fun () -> be.AttentionForward(q, k, v, o, lse, scale))
        let r1 = record "attention" be $"forward {name}" s fwd fwdFlops
        report r1
        yield r1
        let both = measure be opts (fun () ->
            be.AttentionForward(q, k, v, o, lse, scale)
            be.AttentionBackward(q, k, v, o, lse, dO, dq, dk, dv, scale))
        let r2 = record "attention" be $"forward+backward {name}" s both (3.5 * fwdFlops)
        report r2
        yield r2 ]

/// Useful FLOPs of one GDN forward (either form, chunk size `chunk`) over T tokens, H heads, K = V = D.
let gdnForwardFlops (mode: GdnMode) (chunk: int) (t: int) (h: int) (d: int) =
    let k, v, c = float d, float d, float chunk
    let perTokenHead =
        match mode with
        | GdnMode.Recurrent -> 7.0 * k * v
        | _ -> c * k + c * c / 3.0 + 2.0 * c * (k + v) + 6.0 * k * v + c * (k + v)
    perTokenHead * float t * float h

/// GDN forward and forward+backward in both forms (L2-normalised q, k as the student uses them).
let runGdn (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    [ for s in shapes opts.Quick do
        let n, ng = s.T * s.H * s.D, s.T * s.H
        use q = be.FromArray(random 1 n -1.0f 1.0f, 1, s.T, s.H, s.D)
        use k = be.FromArray(random 2 n -1.0f 1.0f, 1, s.T, s.H, s.D)
        use v = be.FromArray(random 3 n -1.0f 1.0f, 1, s.T, s.H, s.D)
        use g = be.FromArray(random 4 ng -0.2f -1e-4f, 1, s.T, s.H)
        use beta = be.FromArray(random 5 ng 0.05f 0.95f, 1, s.T, s.H)
        use dO = be.FromArray(random 6 n -1.0f 1.0f, 1, s.T, s.H, s.D)
        use o = be.Allocate q.Shape
        use dq = be.Allocate q.Shape
        use dk = be.Allocate q.Shape
        use dv = be.Allocate q.Shape
        use dg = be.Allocate g.Shape
        use db = be.Allocate g.Shape
        for mode in [ GdnMode.Chunked; GdnMode.Recurrent ] do
            let spec = GdnSpec(1.0f / sqrt (float32 s.D), true, mode, 64)
            let form = if mode = GdnMode.Chunked then "chunked" else "recurrent"
            let name = $"{form} T={s.T} H={s.H} K=V={s.D}"
            let flops = gdnForwardFlops mode 64 s.T s.H s.D
            let supported =
                try
                    be.GdnForward(q, k, v, g, beta, null, o, null, spec)
                    be.Synchronize()
                    true
                with :? NotSupportedException -> false
            if supported then
                let fwd = measure be opts (fun () -> be.GdnForward(q, k, v, g, beta, null, o, null, spec))
                let r1 = record "gdn" be $"forward {name}" s fwd flops
                report r1
                yield r1
                let both = measure be opts (fun () ->
                    be.GdnForward(q, k, v, g, beta, null, o, null, spec)
                    be.GdnBackward(q, k, v, g, beta, null, dO, null, dq, dk, dv, dg, db, null, spec))
                let backFactor = if mode = GdnMode.Recurrent then 2.0 else 2.5
                let r2 = record "gdn" be $"forward+backward {name}" s both ((1.0 + backFactor) * flops)
                report r2
                yield r2 ]
