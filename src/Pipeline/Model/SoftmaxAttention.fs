/// The softmax-attention sublayer of a Llama-style block on a backend (method.md §2, kernels.md §2): q/k/v
/// projections (+ Qwen2 biases), Qwen3 per-head q/k RMSNorm, RoPE, causal GQA attention, o_proj (+ bias).
/// One implementation shared by the teacher forward (Model/Forward.fs) and the kept layers of the hybrid
/// student (Student/HybridForward.fs), so a kept layer is computed exactly as the teacher computes it.
namespace TaylorCalibrate.Pipeline.Model

open System
open System.Collections.Generic
open TaylorCalibrate.Backend

/// One layer's attention weights on the device; shapes as in LayerWeights, biases as rows (1, n).
type DeviceAttention =
    { Wq: Tensor
      Wk: Tensor
      Wv: Tensor
      Wo: Tensor
      Bq: Tensor option
      Bk: Tensor option
      Bv: Tensor option
      Bo: Tensor option
      QNorm: Tensor option
      KNorm: Tensor option }

/// Activations of the attention sublayer for one (B, T), reused across layers.
type AttentionScratch(be: IBackend, c: ModelConfig, B: int, T: int) =
    let owned = List<Tensor>()
    let alloc (shape: int[]) =
        let t = be.Allocate shape
        owned.Add t
        t
    let N = B * T
    let H, Hkv, hd = c.Heads, c.KvHeads, c.HeadDim
    let q = alloc [| B; T; H; hd |]
    let k = alloc [| B; T; Hkv; hd |]
    let ones =
        if c.QkvBias || c.OutputBias then
            let t = alloc [| N; 1 |]
            be.Fill(t, 1f)
            Some t
        else None
    member val Q = q
    member val K = k
    member val V = alloc [| B; T; Hkv; hd |]
    /// (B, T, H, hd) attention output before o_proj: the teacher context C.
    member val O = alloc [| B; T; H; hd |]
    member val Lse = alloc [| B; H; T |]
    member val RstdQ = (if c.QkNorm then alloc [| N * H |] else null)
    member val RstdK = (if c.QkNorm then alloc [| N * Hkv |] else null)
    // Normed q/k go to separate buffers: RmsNorm does not promise y may alias x (Rope does).
    member val QNormed = (if c.QkNorm then alloc [| B; T; H; hd |] else q)
    member val KNormed = (if c.QkNorm then alloc [| B; T; Hkv; hd |] else k)
    /// (N, 1) of ones for adding biases as rank-1 GEMMs (when the family has biases).
    member _.Ones = ones
    member _.Rows = N
    interface IDisposable with
        member _.Dispose() = for t in owned do t.Dispose()

module SoftmaxAttention =
    /// y (rows, out) = x (rows, in) · wᵀ, w stored (out, in).
    let linear (be: IBackend) (x: Tensor) (w: Tensor) (y: Tensor) (rows: int) =
        be.Gemm(x, w, y, GemmSpec(rows, w.Shape[0], w.Shape[1], TransB = true))

    /// y (rows, n) += ones (rows, 1) · b (1, n): a bias broadcast over rows as a rank-1 GEMM.
    let addBias (be: IBackend) (ones: Tensor) (b: Tensor) (y: Tensor) (rows: int) =
        be.Gemm(ones, b, y, GemmSpec(rows, b.Shape[1], 1, Beta = 1f))

    /// Uploads one layer's attention weights with `upload` (which owns the tensors).
    let upload (upload: float32[] -> int[] -> Tensor) (c: ModelConfig) (l: LayerWeights) : DeviceAttention =
        let row (n: int) (a: float32[] option) = a |> Option.map (fun a -> upload a [| 1; n |])
        { Wq = upload l.Wq [| c.QDim; c.Dim |]
          Wk = upload l.Wk [| c.KvDim; c.Dim |]
          Wv = upload l.Wv [| c.KvDim; c.Dim |]
          Wo = upload l.Wo [| c.Dim; c.QDim |]
          Bq = row c.QDim l.Bq
          Bk = row c.KvDim l.Bk
          Bv = row c.KvDim l.Bv
          Bo = row c.Dim l.Bo
          QNorm = l.QNorm |> Option.map (fun a -> upload a [| c.HeadDim |])
          KNorm = l.KNorm |> Option.map (fun a -> upload a [| c.HeadDim |]) }

    /// out (B, T, D) = attention sublayer of the normed input xn (B, T, D), with RoPE tables cos, sin
    /// (T, hd/2); per-head statistics into stats (B, H, 2) when given. The context stays in s.O.
    let forward (be: IBackend) (c: ModelConfig) (a: DeviceAttention) (s: AttentionScratch) (xn: Tensor)
                (cos: Tensor) (sin: Tensor) (stats: Tensor option) (out: Tensor) =
        let N = s.Rows
        let bias (b: Tensor option) (y: Tensor) =
            match b, s.Ones with
            | Some b, Some ones -> addBias be ones b y N
            | _ -> ()
        linear be xn a.Wq s.Q N
        linear be xn a.Wk s.K N
        linear be xn a.Wv s.V N
        bias a.Bq s.Q
        bias a.Bk s.K
        bias a.Bv s.V
        a.QNorm |> Option.iter (fun w -> be.RmsNorm(s.Q, w, s.QNormed, s.RstdQ, float32 c.NormEps))
        a.KNorm |> Option.iter (fun w -> be.RmsNorm(s.K, w, s.KNormed, s.RstdK, float32 c.NormEps))
        be.Rope(s.QNormed, cos, sin, s.Q, c.RopeLayout, false)
        be.Rope(s.KNormed, cos, sin, s.K, c.RopeLayout, false)
        be.AttentionForward(s.Q, s.K, s.V, s.O, s.Lse, float32 c.AttentionScale, Option.toObj stats, null)
        linear be s.O a.Wo out N
        bias a.Bo out
