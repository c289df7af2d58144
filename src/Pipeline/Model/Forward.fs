/// The teacher forward pass on a backend, batched over [B, T] token ids (no padding; every row is causal
/// from position 0):
///   x = E[ids];  per layer: h = x + W_o·Attn(RoPE(norm_qk(W_q x̂ + b_q)), RoPE(norm_qk(W_k x̂ + b_k)), W_v x̂ + b_v) + b_o,
///   x̂ = RMSNorm_attn(x);  x = h + W_down(silu(W_gate ĥ) ⊙ W_up ĥ), ĥ = RMSNorm_mlp(h);
///   logits = lm_head · RMSNorm_final(x).
/// Optionally records per-layer traces for the conversion stage (method.md §5.1).
module TaylorCalibrate.Pipeline.Model.Forward

open System
open System.Collections.Generic
open TaylorCalibrate.Backend

/// What a forward call records besides the logits.
type ForwardOptions =
    { /// Layers whose trace is recorded.
      Trace: Set<int>
      /// Layers whose attention sublayer is removed (its output taken as 0; the residual is kept).
      SkipAttention: Set<int> }

module ForwardOptions =
    let none = { Trace = Set.empty; SkipAttention = Set.empty }

/// One layer's recorded activations (host copies).
type LayerTrace =
    { Layer: int
      /// (B, T, D) RMSNorm_attn of the layer input: what the attention projections see.
      Input: float32[]
      /// (B, T, H, HeadDim) attention output before o_proj (Σ_j A_ij V_j, V with its bias).
      Context: float32[]
      /// (B, T, D) attention sublayer output after o_proj (and its bias).
      Output: float32[]
      /// (B, H, 2) per head: mean attention distance, mean entropy (IBackend.AttentionForward).
      Stats: float32[] }

/// Logits and traces of one forward call.
type ForwardResult =
    { /// (B, T, V), owned by the caller.
      Logits: Tensor
      Traces: LayerTrace list }

let private linear = SoftmaxAttention.linear

/// Runs the forward on ids (B·T, row-major) and returns logits (B, T, V) plus the requested traces.
let run (m: DeviceTeacher) (ids: int[]) (B: int) (T: int) (opts: ForwardOptions) : ForwardResult =
    let c = m.Config
    let be = m.Backend
    if B <= 0 || T <= 0 || ids.Length <> B * T then invalidArg "ids" $"{ids.Length} ids do not fill [B={B}, T={T}]"
    if T > c.Context then invalidArg "T" $"sequence length {T} exceeds the model's context {c.Context}"
    for id in ids do
        if id < 0 || id >= c.Vocab then invalidArg "ids" $"token id {id} is outside the vocabulary [0, {c.Vocab})"
    let N = B * T
    let H, D, F = c.Heads, c.Dim, c.Hidden
    let scratch = List<Tensor>()
    let scratchOwners = List<IDisposable>()
    let alloc (shape: int[]) =
        let t = be.Allocate shape
        scratch.Add t
        t
    try
        let idsT = be.FromInts(ids, N)
        scratch.Add idsT
        let mutable x = alloc [| B; T; D |]
        let mutable h = alloc [| B; T; D |]
        let xn = alloc [| B; T; D |]
        let rstd = alloc [| N |]
        let attnOut = alloc [| B; T; D |]
        let gate = alloc [| B; T; F |]
        let up = alloc [| B; T; F |]
        let act = alloc [| B; T; F |]
        let down = alloc [| B; T; D |]
        let stats = if opts.Trace.IsEmpty then None else Some(alloc [| B; H; 2 |])
        let attn = new AttentionScratch(be, c, B, T)
        scratchOwners.Add attn
        let cos, sin = m.Rope T
        let traces = List<LayerTrace>()
        be.Embedding(m.Embedding, idsT, x)
        for li in 0 .. c.Layers - 1 do
            let l = m.Layers[li]
            let tracing = opts.Trace.Contains li
            if not (opts.SkipAttention.Contains li) || tracing then
                be.RmsNorm(x, l.AttnNorm, xn, rstd, float32 c.NormEps)
                SoftmaxAttention.forward be c l.Attention attn xn cos sin (if tracing then stats else None) attnOut
                if tracing then
                    traces.Add
                        { Layer = li; Input = xn.ToArray(); Context = attn.O.ToArray(); Output = attnOut.ToArray()
                          Stats = stats.Value.ToArray() }
            if not (opts.SkipAttention.Contains li) then
                be.Add(x, attnOut, h)
                let t = x
                x <- h
                h <- t
            be.RmsNorm(x, l.MlpNorm, xn, rstd, float32 c.NormEps)
            linear be xn l.Gate gate N
            linear be xn l.Up up N
            be.SwiGlu(gate, up, act)
            linear be act l.Down down N
            be.Add(x, down, h)
            let t = x
            x <- h
            h <- t
        be.RmsNorm(x, m.FinalNorm, xn, rstd, float32 c.NormEps)
        let logits = be.Allocate [| B; T; c.Vocab |]
        try linear be xn m.LmHead logits N
        with _ ->
            logits.Dispose()
            reraise ()
        { Logits = logits; Traces = List.ofSeq traces }
    finally
        for t in scratch do t.Dispose()
        for o in scratchOwners do o.Dispose()

/// Logits (B·T·V, host) of a forward without traces.
let logits (m: DeviceTeacher) (ids: int[]) (B: int) (T: int) : float32[] =
    let r = run m ids B T ForwardOptions.none
    try r.Logits.ToArray() finally r.Logits.Dispose()
