/// The gdn_v4 layer on a backend (method.md §3; kernels: kernels.md §3, §4), forward and an explicit
/// layer-level backward built from the backend's reverse-mode ops (no autograd). Per token x ∈ R^D:
///   q, k, v = silu(W_q x), silu(W_k x), silu(W_v x)            (L2 norm of q, k inside the GDN kernel)
///   β = σ(W_b x);  z = W_a x + dt_bias;  g = −e^{A_log} ⊙ softplus(z)
///   o = GatedDeltaRule(q̂, k̂, v, g, β), read-out scale hd^−½ (chunked kernel)
///   u = RMSNorm_hd(o)·w_onorm ⊙ silu(W_g x);  y = W_o u.
/// Per-head broadcasts ([H] vectors over rows) are rank-1 or diagonal GEMMs, since the contract has no
/// broadcasting elementwise ops.
module TaylorCalibrate.Pipeline.Student.GdnLayer

open System
open System.Collections.Generic
open TaylorCalibrate.Backend

/// RMSNorm epsilon of the gated output norm (method.md §3).
let outputNormEps = 1e-5f

/// Sizes of one layer.
type GdnDims =
    { D: int
      H: int
      Hd: int }
    member d.Q = d.H * d.Hd

/// The weights of one layer on a device. A_log and dt_bias are stored (1, H) so they can be GEMM operands.
type DeviceGdn(be: IBackend, dims: GdnDims, w: GdnWeights) =
    let owned = List<Tensor>()
    let up (a: float32[]) (shape: int[]) =
        let t = be.FromArray(a, shape)
        owned.Add t
        t
    let D, H, Hd, Q = dims.D, dims.H, dims.Hd, dims.Q
    let wq = up w.Wq [| Q; D |]
    let wk = up w.Wk [| Q; D |]
    let wv = up w.Wv [| Q; D |]
    let wg = up w.Wg [| Q; D |]
    let wa = up w.Wa [| H; D |]
    let wb = up w.Wb [| H; D |]
    let aLog = up w.ALog [| 1; H |]
    let dtBias = up w.DtBias [| 1; H |]
    let oNorm = up w.ONorm [| Hd |]
    let wo = up w.Wo [| D; Q |]
    member _.Backend = be
    member _.Dims = dims
    member _.Wq = wq
    member _.Wk = wk
    member _.Wv = wv
    member _.Wg = wg
    member _.Wa = wa
    member _.Wb = wb
    member _.ALog = aLog
    member _.DtBias = dtBias
    member _.ONorm = oNorm
    member _.Wo = wo
    /// The parameters Phase 2 trains, in a fixed order (o_proj and o_norm are frozen, method.md §5.3).
    member _.Trainable = [ wq; wk; wv; wg; wa; wb; aLog; dtBias ]
    /// Downloads the weights.
    member _.ToWeights() : GdnWeights =
        { Wq = wq.ToArray(); Wk = wk.ToArray(); Wv = wv.ToArray(); Wg = wg.ToArray(); Wa = wa.ToArray()
          Wb = wb.ToArray(); ALog = aLog.ToArray(); DtBias = dtBias.ToArray(); ONorm = oNorm.ToArray(); Wo = wo.ToArray() }
    interface IDisposable with
        member _.Dispose() = for t in owned do t.Dispose()

/// Activations of one forward on N = B·T tokens, kept for the backward, plus backward scratch.
type GdnWorkspace(be: IBackend, dims: GdnDims, B: int, T: int) =
    let owned = List<Tensor>()
    let alloc (shape: int[]) =
        let t = be.Allocate shape
        owned.Add t
        t
    let rows = B * T
    let H, Hd = dims.H, dims.Hd
    let ones = alloc [| rows; 1 |]
    do be.Fill(ones, 1f)
    member _.B = B
    member _.T = T
    member _.N = rows
    /// (N, 1) of ones: rank-1 broadcasts and column sums.
    member _.Ones = ones
    /// (B, T, H, Hd) pre-activations and activations of q, k, v, gate.
    member val Qp = alloc [| B; T; H; Hd |]
    member val Kp = alloc [| B; T; H; Hd |]
    member val Vp = alloc [| B; T; H; Hd |]
    member val Gp = alloc [| B; T; H; Hd |]
    member val Qa = alloc [| B; T; H; Hd |]
    member val Ka = alloc [| B; T; H; Hd |]
    member val Va = alloc [| B; T; H; Hd |]
    member val Ga = alloc [| B; T; H; Hd |]
    /// (B, T, H): z = W_a x + dt_bias, softplus(z), g, W_b x, β.
    member val Z = alloc [| B; T; H |]
    member val Sp = alloc [| B; T; H |]
    member val G = alloc [| B; T; H |]
    member val Bp = alloc [| B; T; H |]
    member val Beta = alloc [| B; T; H |]
    /// (H, H) diag(−e^{A_log}) and (1, H) −e^{A_log}.
    member val DecayDiag = alloc [| H; H |]
    member val NegA = alloc [| 1; H |]
    /// (B, T, H, Hd) GDN output, normed output, gated output; (N·H) rstd of the output norm.
    member val O = alloc [| B; T; H; Hd |]
    member val On = alloc [| B; T; H; Hd |]
    member val U = alloc [| B; T; H; Hd |]
    member val ORstd = alloc [| rows * H |]
    // backward scratch
    member val DU = alloc [| B; T; H; Hd |]
    member val DOn = alloc [| B; T; H; Hd |]
    member val DO = alloc [| B; T; H; Hd |]
    member val DQ = alloc [| B; T; H; Hd |]
    member val DK = alloc [| B; T; H; Hd |]
    member val DV = alloc [| B; T; H; Hd |]
    member val DPre = alloc [| B; T; H; Hd |]
    member val DG = alloc [| B; T; H |]
    member val DBeta = alloc [| B; T; H |]
    member val DSmall = alloc [| B; T; H |]
    member val DSmall2 = alloc [| B; T; H |]
    interface IDisposable with
        member _.Dispose() = for t in owned do t.Dispose()

/// Gradients of the layer's parameters, same shapes as DeviceGdn (o_proj is frozen: no gradient).
type GdnGrads(be: IBackend, dims: GdnDims) =
    let owned = List<Tensor>()
    let alloc (shape: int[]) =
        let t = be.Allocate shape
        owned.Add t
        t
    let D, H, Hd, Q = dims.D, dims.H, dims.Hd, dims.Q
    member val Wq = alloc [| Q; D |]
    member val Wk = alloc [| Q; D |]
    member val Wv = alloc [| Q; D |]
    member val Wg = alloc [| Q; D |]
    member val Wa = alloc [| H; D |]
    member val Wb = alloc [| H; D |]
    member val ALog = alloc [| 1; H |]
    member val DtBias = alloc [| 1; H |]
    member val ONorm = alloc [| Hd |]
    /// In the order of DeviceGdn.Trainable.
    member g.Trainable = [ g.Wq; g.Wk; g.Wv; g.Wg; g.Wa; g.Wb; g.ALog; g.DtBias ]
    member _.Zero() = for t in owned do be.Fill(t, 0f)
    interface IDisposable with
        member _.Dispose() = for t in owned do t.Dispose()

/// y (N, out) = x (N, in) · wᵀ (+ y when accumulate).
let private linear (be: IBackend) (x: Tensor) (w: Tensor) (y: Tensor) (N: int) =
    be.Gemm(x, w, y, GemmSpec(N, w.Shape[0], w.Shape[1], TransB = true))

/// dw (out, in) += dyᵀ (out, N) · x (N, in).
let private weightGrad (be: IBackend) (dy: Tensor) (x: Tensor) (dw: Tensor) (N: int) =
    be.Gemm(dy, x, dw, GemmSpec(dw.Shape[0], dw.Shape[1], N, TransA = true, Beta = 1f))

/// dx (N, in) (+)= dy (N, out) · w (out, in).
let private inputGrad (be: IBackend) (dy: Tensor) (w: Tensor) (dx: Tensor) (N: int) (accumulate: bool) =
    be.Gemm(dy, w, dx, GemmSpec(N, w.Shape[1], w.Shape[0], Beta = (if accumulate then 1f else 0f)))

/// The GDN kernel options of gdn_v4: read-out scale hd^−½, L2 norm of q and k inside, chunked.
let gdnSpec (dims: GdnDims) = GdnSpec(float32 (1.0 / sqrt (float dims.Hd)), L2NormQK = true, Mode = GdnMode.Chunked)

/// Everything up to the GDN kernel's inputs: q, k, v (SiLU), g, β into the workspace. x: (B, T, D).
let mixerInputs (p: DeviceGdn) (ws: GdnWorkspace) (x: Tensor) =
    let be, N, H = p.Backend, ws.N, p.Dims.H
    linear be x p.Wq ws.Qp N
    linear be x p.Wk ws.Kp N
    linear be x p.Wv ws.Vp N
    be.Unary(UnaryOp.Silu, ws.Qp, ws.Qa)
    be.Unary(UnaryOp.Silu, ws.Kp, ws.Ka)
    be.Unary(UnaryOp.Silu, ws.Vp, ws.Va)
    // z = W_a x + 1·dt_bias; g = softplus(z)·diag(−e^{A_log}).
    linear be x p.Wa ws.Z N
    be.Gemm(ws.Ones, p.DtBias, ws.Z, GemmSpec(N, H, 1, Beta = 1f))
    be.Unary(UnaryOp.Softplus, ws.Z, ws.Sp)
    be.Unary(UnaryOp.Exp, p.ALog, ws.NegA)
    be.Scale(ws.NegA, -1f, ws.NegA)
    be.Fill(ws.DecayDiag, 0f)
    for h in 0 .. H - 1 do be.Copy(ws.NegA, int64 h, ws.DecayDiag, int64 (h * H + h), 1L)
    be.Gemm(ws.Sp, ws.DecayDiag, ws.G, GemmSpec(N, H, H))
    linear be x p.Wb ws.Bp N
    be.Unary(UnaryOp.Sigmoid, ws.Bp, ws.Beta)

/// Forward of the layer: y (B, T, D) from x (B, T, D); the workspace keeps what the backward needs.
let forward (p: DeviceGdn) (ws: GdnWorkspace) (x: Tensor) (y: Tensor) =
    let be, N = p.Backend, ws.N
    mixerInputs p ws x
    be.GdnForward(ws.Qa, ws.Ka, ws.Va, ws.G, ws.Beta, null, ws.O, null, gdnSpec p.Dims)
    be.RmsNorm(ws.O, p.ONorm, ws.On, ws.ORstd, outputNormEps)
    linear be x p.Wg ws.Gp N
    be.Unary(UnaryOp.Silu, ws.Gp, ws.Ga)
    be.Mul(ws.On, ws.Ga, ws.U)
    linear be ws.U p.Wo y N

/// Backward of the layer after `forward` on the same x: accumulates parameter gradients into `grads`
/// (the caller zeroes them) and, when given, writes dx (B, T, D).
let backward (p: DeviceGdn) (ws: GdnWorkspace) (x: Tensor) (dy: Tensor) (grads: GdnGrads) (dx: Tensor option) =
    let be, N, H = p.Backend, ws.N, p.Dims.H
    // y = W_o u  →  du = dy·W_o (o_proj frozen).
    be.Gemm(dy, p.Wo, ws.DU, GemmSpec(N, p.Dims.Q, p.Dims.D))
    // u = on ⊙ silu(gp).
    be.Mul(ws.DU, ws.Ga, ws.DOn)
    be.Mul(ws.DU, ws.On, ws.DO) // d silu(gp), parked in DO until the norm backward overwrites it
    be.UnaryBackward(UnaryOp.Silu, ws.Gp, ws.DO, ws.DPre)
    weightGrad be ws.DPre x grads.Wg N
    dx |> Option.iter (fun dx -> inputGrad be ws.DPre p.Wg dx N false)
    be.RmsNormBackward(ws.DOn, ws.O, p.ONorm, ws.ORstd, ws.DO, grads.ONorm)
    be.GdnBackward(ws.Qa, ws.Ka, ws.Va, ws.G, ws.Beta, null, ws.DO, null, ws.DQ, ws.DK, ws.DV, ws.DG, ws.DBeta, null, gdnSpec p.Dims)
    for pre, dact, w, dw in [ ws.Qp, ws.DQ, p.Wq, grads.Wq; ws.Kp, ws.DK, p.Wk, grads.Wk; ws.Vp, ws.DV, p.Wv, grads.Wv ] do
        be.UnaryBackward(UnaryOp.Silu, pre, dact, ws.DPre)
        weightGrad be ws.DPre x dw N
        dx |> Option.iter (fun dx -> inputGrad be ws.DPre w dx N true)
    // β = σ(W_b x).
    be.UnaryBackward(UnaryOp.Sigmoid, ws.Bp, ws.DBeta, ws.DSmall)
    weightGrad be ws.DSmall x grads.Wb N
    dx |> Option.iter (fun dx -> inputGrad be ws.DSmall p.Wb dx N true)
    // g = −e^{A_log}·softplus(z): dA_log = Σ_rows dg ⊙ g; dsoftplus = dg·diag(−e^{A_log}); dz = dsp ⊙ σ(z).
    be.Mul(ws.DG, ws.G, ws.DSmall)
    be.Gemm(ws.Ones, ws.DSmall, grads.ALog, GemmSpec(1, H, N, TransA = true, Beta = 1f))
    be.Gemm(ws.DG, ws.DecayDiag, ws.DSmall, GemmSpec(N, H, H))
    be.UnaryBackward(UnaryOp.Softplus, ws.Z, ws.DSmall, ws.DSmall2)
    be.Gemm(ws.Ones, ws.DSmall2, grads.DtBias, GemmSpec(1, H, N, TransA = true, Beta = 1f))
    weightGrad be ws.DSmall2 x grads.Wa N
    dx |> Option.iter (fun dx -> inputGrad be ws.DSmall2 p.Wa dx N true)
