/// The gdn_v4 sequence-mixer sublayer (docs/method.md §3; kernels: docs/kernels.md §3, §4) and its explicit reverse
/// built from the backend's ops (docs/training.md, "Layers"). Per token x ∈ R^D:
///   q, k, v = silu(W_q x), silu(W_k x), silu(W_v x)            (L2 norm of q, k inside the GDN kernel)
///   β = σ(W_b x);  z = W_a x + dt_bias;  g = −e^{A_log} ⊙ softplus(z)
///   o = GatedDeltaRule(q̂, k̂, v, g, β), read-out scale hd^−½ (chunked kernel)
///   u = RMSNorm_hd(o)·w_onorm ⊙ silu(W_g x);  y = W_o u.
/// Per-head broadcasts ([H] vectors over rows) are rank-1 or diagonal GEMMs, since the contract has no
/// broadcasting elementwise ops. The recurrent states are never saved: the kernels' backward recomputes them.
namespace TaylorCalibrate.Pipeline.Layers

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Student

/// Sizes of one layer.
type GdnDims =
    { D: int
      H: int
      Hd: int }
    member d.Q = d.H * d.Hd

/// The weights of one layer on a device. A_log and dt_bias are stored (1, H) so they can be GEMM operands.
type GdnParams =
    { Dims: GdnDims
      /// (Q, D) each.
      Wq: Tensor
      Wk: Tensor
      Wv: Tensor
      Wg: Tensor
      /// (H, D) each.
      Wa: Tensor
      Wb: Tensor
      /// (1, H) each.
      ALog: Tensor
      DtBias: Tensor
      /// (Hd)
      ONorm: Tensor
      /// (D, Q)
      Wo: Tensor }

/// The GDN kernel's inputs for N = B·T tokens: pre-activations and activations of q, k, v, the decay
/// input z, the log decay g, the write strength pre-activation and β.
type GdnInputs =
    { /// (B, T, H, Hd) W_q x, W_k x, W_v x and their SiLU.
      Qp: Tensor
      Kp: Tensor
      Vp: Tensor
      Qa: Tensor
      Ka: Tensor
      Va: Tensor
      /// (B, T, H) z = W_a x + dt_bias, g, W_b x, β.
      Z: Tensor
      G: Tensor
      Bp: Tensor
      Beta: Tensor }

/// What the GDN backward needs.
type GdnSaved =
    { /// (B, T, D) input.
      X: Tensor
      Inputs: GdnInputs
      /// (B, T, H, Hd) W_g x and its SiLU; the kernel output o and RMSNorm(o)·w.
      Gp: Tensor
      Ga: Tensor
      O: Tensor
      On: Tensor
      /// (N·H) r of the output norm.
      ORstd: Tensor }

module Gdn =
    /// RMSNorm epsilon of the gated output norm (docs/method.md §3).
    let outputNormEps = 1e-5f

    /// The layer sizes of a model config.
    let dimsOf (c: TaylorCalibrate.Pipeline.Model.ModelConfig) : GdnDims = { D = c.Dim; H = c.Heads; Hd = c.HeadDim }

    /// The GDN kernel options of gdn_v4: read-out scale hd^−½, L2 norm of q and k inside, chunked.
    let spec (dims: GdnDims) = GdnSpec(float32 (1.0 / sqrt (float dims.Hd)), L2NormQK = true, Mode = GdnMode.Chunked)

    /// Uploads one layer's weights.
    let upload (owner: TensorOwner) (dims: GdnDims) (w: GdnWeights) : GdnParams =
        let D, H, Hd, Q = dims.D, dims.H, dims.Hd, dims.Q
        let up a shape = owner.Upload(a, shape)
        { Dims = dims
          Wq = up w.Wq [| Q; D |]; Wk = up w.Wk [| Q; D |]; Wv = up w.Wv [| Q; D |]; Wg = up w.Wg [| Q; D |]
          Wa = up w.Wa [| H; D |]; Wb = up w.Wb [| H; D |]
          ALog = up w.ALog [| 1; H |]; DtBias = up w.DtBias [| 1; H |]
          ONorm = up w.ONorm [| Hd |]; Wo = up w.Wo [| D; Q |] }

    /// Downloads the weights.
    let download (p: GdnParams) : GdnWeights =
        { Wq = p.Wq.ToArray(); Wk = p.Wk.ToArray(); Wv = p.Wv.ToArray(); Wg = p.Wg.ToArray(); Wa = p.Wa.ToArray()
          Wb = p.Wb.ToArray(); ALog = p.ALog.ToArray(); DtBias = p.DtBias.ToArray(); ONorm = p.ONorm.ToArray()
          Wo = p.Wo.ToArray() }

    /// Every tensor with its name suffix under "attn." (the StudentIo spelling).
    let named (p: GdnParams) : (string * Tensor) list =
        [ "q_proj.weight", p.Wq; "k_proj.weight", p.Wk; "v_proj.weight", p.Wv; "g_proj.weight", p.Wg
          "a_proj.weight", p.Wa; "b_proj.weight", p.Wb; "A_log", p.ALog; "dt_bias", p.DtBias
          "o_norm.weight", p.ONorm; "o_proj.weight", p.Wo ]

    let private lin (w: Tensor) = Linear.ofWeight w

    /// (H, H) diag(−e^{A_log}), into scratch; a pure function of A_log, so the backward rebuilds it exactly.
    let private decayDiag (be: IBackend) (scratch: Scratch) (p: GdnParams) =
        let H = p.Dims.H
        let negA = scratch.Get("gdn.nega", [| 1; H |])
        let diag = scratch.Get("gdn.decaydiag", [| H; H |])
        be.Unary(UnaryOp.Exp, p.ALog, negA)
        be.Scale(negA, -1f, negA)
        be.Fill(diag, 0f)
        for h in 0 .. H - 1 do be.Copy(negA, int64 h, diag, int64 (h * H + h), 1L)
        diag

    /// Everything up to the GDN kernel's inputs, into the arena. x: (B, T, D).
    let mixerInputs (be: IBackend) (scratch: Scratch) (arena: Arena) (p: GdnParams) (x: Tensor) : GdnInputs =
        let B, T = x.Shape[0], x.Shape[1]
        let N, H, Hd = B * T, p.Dims.H, p.Dims.Hd
        let wide () = arena.Alloc [| B; T; H; Hd |]
        let narrow () = arena.Alloc [| B; T; H |]
        let i =
            { Qp = wide (); Kp = wide (); Vp = wide (); Qa = wide (); Ka = wide (); Va = wide ()
              Z = narrow (); G = narrow (); Bp = narrow (); Beta = narrow () }
        Linear.forward be scratch (lin p.Wq) x i.Qp N
        Linear.forward be scratch (lin p.Wk) x i.Kp N
        Linear.forward be scratch (lin p.Wv) x i.Vp N
        be.Unary(UnaryOp.Silu, i.Qp, i.Qa)
        be.Unary(UnaryOp.Silu, i.Kp, i.Ka)
        be.Unary(UnaryOp.Silu, i.Vp, i.Va)
        // z = W_a x + 1·dt_bias; g = softplus(z)·diag(−e^{A_log}).
        Linear.forward be scratch { W = p.Wa; Bias = Some p.DtBias } x i.Z N
        let sp = scratch.Get("gdn.softplus", [| B; T; H |])
        be.Unary(UnaryOp.Softplus, i.Z, sp)
        be.Gemm(sp, decayDiag be scratch p, i.G, GemmSpec(N, H, H))
        Linear.forward be scratch (lin p.Wb) x i.Bp N
        be.Unary(UnaryOp.Sigmoid, i.Bp, i.Beta)
        i

    /// y (B, T, D) = the layer on x (B, T, D).
    let forward (be: IBackend) (scratch: Scratch) (arena: Arena) (p: GdnParams) (x: Tensor) (y: Tensor) : GdnSaved =
        let B, T = x.Shape[0], x.Shape[1]
        let N, H, Hd = B * T, p.Dims.H, p.Dims.Hd
        let i = mixerInputs be scratch arena p x
        let wide () = arena.Alloc [| B; T; H; Hd |]
        let s = { X = x; Inputs = i; Gp = wide (); Ga = wide (); O = wide (); On = wide (); ORstd = arena.Alloc [| N * H |] }
        be.GdnForward(i.Qa, i.Ka, i.Va, i.G, i.Beta, null, s.O, null, spec p.Dims)
        be.RmsNorm(s.O, p.ONorm, s.On, s.ORstd, outputNormEps)
        Linear.forward be scratch (lin p.Wg) x s.Gp N
        be.Unary(UnaryOp.Silu, s.Gp, s.Ga)
        let u = scratch.Get("gdn.u", s.O.Shape)
        be.Mul(s.On, s.Ga, u)
        Linear.forward be scratch (lin p.Wo) u y N
        s

    /// Reverse of `forward`: accumulates the gradients of the tensors `grads` trains and, when given,
    /// writes dx (B, T, D).
    let backward (be: IBackend) (scratch: Scratch) (grads: Grads) (p: GdnParams) (s: GdnSaved) (dy: Tensor) (dx: Tensor option) =
        let x, i = s.X, s.Inputs
        let N, H = x.Shape[0] * x.Shape[1], p.Dims.H
        let wide key = scratch.Get("gdn." + key, s.O.Shape)
        let narrow key = scratch.Get("gdn." + key, i.Z.Shape)
        let dU, dOn, dO, dPre = wide "du", wide "don", wide "do", wide "dpre"
        let dQ, dK, dV = wide "dq", wide "dk", wide "dv"
        let dG, dBeta, dSmall, dSmall2 = narrow "dg", narrow "dbeta", narrow "dsmall", narrow "dsmall2"
        // y = W_o u  →  du = dy·W_o; dW_o from u = on ⊙ silu(gp), rebuilt exactly.
        if (grads.Of p.Wo).IsSome then
            let u = wide "u"
            be.Mul(s.On, s.Ga, u)
            Linear.backwardParams be scratch grads (lin p.Wo) u dy N
        Linear.backwardInput be (lin p.Wo) dy dU N false
        // u = on ⊙ silu(gp).
        be.Mul(dU, s.Ga, dOn)
        be.Mul(dU, s.On, dO) // d silu(gp), parked in dO until the norm backward overwrites it
        be.UnaryBackward(UnaryOp.Silu, s.Gp, dO, dPre)
        Linear.backward be scratch grads (lin p.Wg) x dPre dx N false
        be.RmsNormBackward(dOn, s.O, p.ONorm, s.ORstd, dO, RmsNorm.weightGradOrSink be scratch grads p.ONorm)
        be.GdnBackward(i.Qa, i.Ka, i.Va, i.G, i.Beta, null, dO, null, dQ, dK, dV, dG, dBeta, null, spec p.Dims)
        for pre, dact, w in [ i.Qp, dQ, p.Wq; i.Kp, dK, p.Wk; i.Vp, dV, p.Wv ] do
            be.UnaryBackward(UnaryOp.Silu, pre, dact, dPre)
            Linear.backward be scratch grads (lin w) x dPre dx N true
        // β = σ(W_b x).
        be.UnaryBackward(UnaryOp.Sigmoid, i.Bp, dBeta, dSmall)
        Linear.backward be scratch grads (lin p.Wb) x dSmall dx N true
        // g = −e^{A_log}·softplus(z): dA_log = Σ_rows dg ⊙ g; dsoftplus = dg·diag(−e^{A_log}); dz = dsp ⊙ σ(z).
        let ones = scratch.Ones N
        grads.Of p.ALog |> Option.iter (fun dALog ->
            be.Mul(dG, i.G, dSmall)
            be.Gemm(ones, dSmall, dALog, GemmSpec(1, H, N, TransA = true, Beta = 1f)))
        be.Gemm(dG, decayDiag be scratch p, dSmall, GemmSpec(N, H, H))
        be.UnaryBackward(UnaryOp.Softplus, i.Z, dSmall, dSmall2)
        Linear.backward be scratch grads { W = p.Wa; Bias = Some p.DtBias } x dSmall2 dx N true
