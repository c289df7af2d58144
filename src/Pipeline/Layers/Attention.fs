/// The softmax-attention sublayer of a Llama-style block and its reverse (docs/method.md §2, docs/kernels.md §2;
/// docs/training.md, "Layers"):
///   q = RoPE(norm_q(W_q x + b_q)),  k = RoPE(norm_k(W_k x + b_k)),  v = W_v x + b_v     (norm: Qwen3 only)
///   o = Attn(q, k, v) (causal, GQA),  y = W_o o + b_o.
/// Saves q and k after RoPE, v, o and the row log-sum-exp (plus the pre-norm q, k and their r for Qwen3):
/// the attention probabilities are never stored; the backend's flash backward recomputes them from lse.
namespace TaylorCalibrate.Pipeline.Layers

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model

/// One layer's attention weights; biases as rows (1, n).
type AttentionParams =
    { Q: LinearParams
      K: LinearParams
      V: LinearParams
      O: LinearParams
      /// (HeadDim) each, Qwen3.
      QNorm: Tensor option
      KNorm: Tensor option }

/// What the attention backward needs.
type AttentionSaved =
    { /// (B, T, D) the sublayer input.
      X: Tensor
      /// (B, T, H, hd), (B, T, Hkv, hd) q and k as projected, before the q/k norm, with the norm's r
      /// (N·H), (N·Hkv) (Qwen3 only).
      QPre: (Tensor * Tensor) option
      KPre: (Tensor * Tensor) option
      /// (B, T, H, hd), (B, T, Hkv, hd), (B, T, Hkv, hd) after RoPE: the kernel's inputs.
      Q: Tensor
      K: Tensor
      V: Tensor
      /// (B, T, H, hd) context Σ_j A_ij v_j, before o_proj.
      O: Tensor
      /// (B, H, T) row log-sum-exp.
      Lse: Tensor
      /// RoPE tables (T, hd/2), shared, not owned.
      Cos: Tensor
      Sin: Tensor }

module Attention =
    /// Uploads one layer's attention weights.
    let upload (owner: TensorOwner) (c: ModelConfig) (l: LayerWeights) : AttentionParams =
        let up a shape = owner.Upload(a, shape)
        let row (n: int) (a: float32[] option) = a |> Option.map (fun a -> up a [| 1; n |])
        { Q = { W = up l.Wq [| c.QDim; c.Dim |]; Bias = row c.QDim l.Bq }
          K = { W = up l.Wk [| c.KvDim; c.Dim |]; Bias = row c.KvDim l.Bk }
          V = { W = up l.Wv [| c.KvDim; c.Dim |]; Bias = row c.KvDim l.Bv }
          O = { W = up l.Wo [| c.Dim; c.QDim |]; Bias = row c.Dim l.Bo }
          QNorm = l.QNorm |> Option.map (fun a -> up a [| c.HeadDim |])
          KNorm = l.KNorm |> Option.map (fun a -> up a [| c.HeadDim |]) }

    /// Every tensor with its name suffix under "attn." (the StudentIo spelling).
    let named (p: AttentionParams) : (string * Tensor) list =
        [ yield "q_proj.weight", p.Q.W
          yield "k_proj.weight", p.K.W
          yield "v_proj.weight", p.V.W
          yield "o_proj.weight", p.O.W
          match p.Q.Bias with Some b -> yield "q_proj.bias", b | None -> ()
          match p.K.Bias with Some b -> yield "k_proj.bias", b | None -> ()
          match p.V.Bias with Some b -> yield "v_proj.bias", b | None -> ()
          match p.O.Bias with Some b -> yield "o_proj.bias", b | None -> ()
          match p.QNorm with Some w -> yield "q_norm.weight", w | None -> ()
          match p.KNorm with Some w -> yield "k_norm.weight", w | None -> () ]

    /// q or k of one projection: W x + b, then (Qwen3) the per-head RMSNorm, then RoPE.
    let private project be scratch (arena: Arena) (c: ModelConfig) (lin: LinearParams) (norm: Tensor option)
                        (x: Tensor) (B: int) (T: int) (heads: int) (cos: Tensor) (sin: Tensor) (key: string) =
        let rows = B * T
        let shape = [| B; T; heads; c.HeadDim |]
        match norm with
        | None ->
            let y = arena.Alloc shape
            Linear.forward be scratch lin x y rows
            (be: IBackend).Rope(y, cos, sin, y, c.RopeLayout, false)
            y, None
        | Some w ->
            let pre = arena.Alloc shape
            Linear.forward be scratch lin x pre rows
            // RmsNorm does not promise y may alias x, so the normed values go to scratch first (Rope may alias).
            let normed = scratch.Get("attn.normed." + key, shape)
            let rstd = arena.Alloc [| rows * heads |]
            be.RmsNorm(pre, w, normed, rstd, float32 c.NormEps)
            let y = arena.Alloc shape
            be.Rope(normed, cos, sin, y, c.RopeLayout, false)
            y, Some(pre, rstd)

    /// out (B, T, D) = the sublayer on x (B, T, D), RoPE tables cos, sin (T, hd/2); per-head statistics
    /// into stats (B, H, 2) when given.
    let forward (be: IBackend) (scratch: Scratch) (arena: Arena) (c: ModelConfig) (p: AttentionParams)
                (x: Tensor) (cos: Tensor) (sin: Tensor) (stats: Tensor option) (out: Tensor) : AttentionSaved =
        let B, T = x.Shape[0], x.Shape[1]
        let rows = B * T
        let q, qPre = project be scratch arena c p.Q p.QNorm x B T c.Heads cos sin "q"
        let k, kPre = project be scratch arena c p.K p.KNorm x B T c.KvHeads cos sin "k"
        let v = arena.Alloc [| B; T; c.KvHeads; c.HeadDim |]
        Linear.forward be scratch p.V x v rows
        let o = arena.Alloc [| B; T; c.Heads; c.HeadDim |]
        let lse = arena.Alloc [| B; c.Heads; T |]
        be.AttentionForward(q, k, v, o, lse, float32 c.AttentionScale, Option.toObj stats, null)
        Linear.forward be scratch p.O o out rows
        { X = x; QPre = qPre; KPre = kPre; Q = q; K = k; V = v; O = o; Lse = lse; Cos = cos; Sin = sin }

    /// dx (B, T, D) written from dy (B, T, D); parameter gradients accumulated.
    let backward (be: IBackend) (scratch: Scratch) (grads: Grads) (c: ModelConfig) (p: AttentionParams)
                 (s: AttentionSaved) (dy: Tensor) (dx: Tensor) =
        let rows = s.X.Shape[0] * s.X.Shape[1]
        let dO = scratch.Get("attn.do", s.O.Shape)
        let dq = scratch.Get("attn.dq", s.Q.Shape)
        let dk = scratch.Get("attn.dk", s.K.Shape)
        let dv = scratch.Get("attn.dv", s.V.Shape)
        Linear.backward be scratch grads p.O s.O dy (Some dO) rows false
        be.AttentionBackward(s.Q, s.K, s.V, s.O, s.Lse, dO, dq, dk, dv, float32 c.AttentionScale)
        // RoPE is a rotation: its reverse is the inverse rotation, in place.
        be.Rope(dq, s.Cos, s.Sin, dq, c.RopeLayout, true)
        be.Rope(dk, s.Cos, s.Sin, dk, c.RopeLayout, true)
        let throughNorm (norm: Tensor option) (saved: (Tensor * Tensor) option) (d: Tensor) (key: string) =
            match norm, saved with
            | Some w, Some(pre, rstd) ->
                let dpre = scratch.Get("attn.dpre." + key, d.Shape)
                RmsNorm.backwardOf be scratch grads w pre rstd d dpre
                dpre
            | _ -> d
        let dqPre = throughNorm p.QNorm s.QPre dq "q"
        let dkPre = throughNorm p.KNorm s.KPre dk "k"
        Linear.backward be scratch grads p.Q s.X dqPre (Some dx) rows false
        Linear.backward be scratch grads p.K s.X dkPre (Some dx) rows true
        Linear.backward be scratch grads p.V s.X dv (Some dx) rows true
