/// The hybrid student (docs/method.md §2–§4): the teacher's embeddings, norms, MLPs and lm_head, its softmax
/// attention in the kept layers, and a gdn_v4 Gated DeltaNet layer (docs/method.md §3) in every other layer.
/// Host-side fp32 weights, [out, in] row-major like the teacher's.
namespace TaylorCalibrate.Pipeline.Student

open TaylorCalibrate.Pipeline.Model

/// How the teacher's n_kv key/value heads become H GDN heads (docs/method.md §4, §11a).
[<RequireQualifiedAccess>]
type GqaExpand =
    /// GDN head m ← teacher kv head ⌊m/g⌋ (the teacher's own GQA mapping; the project default).
    | Heads
    /// Flattened row r ← teacher row ⌊r/g⌋ (the public reference's repeat; `--gqa-expand rows`).
    | Rows

module GqaExpand =
    let name = function GqaExpand.Heads -> "heads" | GqaExpand.Rows -> "rows"
    let parse = function "heads" -> Some GqaExpand.Heads | "rows" -> Some GqaExpand.Rows | _ -> None

/// The weights of one gdn_v4 layer; Q = H·hd. Names in comments are the saved tensor names.
type GdnWeights =
    { /// (Q, D) q_proj
      Wq: float32[]
      /// (Q, D) k_proj
      Wk: float32[]
      /// (Q, D) v_proj
      Wv: float32[]
      /// (Q, D) g_proj: the output gate
      Wg: float32[]
      /// (H, D) a_proj: decay input
      Wa: float32[]
      /// (H, D) b_proj: write strength input
      Wb: float32[]
      /// (H) A_log
      ALog: float32[]
      /// (H) dt_bias
      DtBias: float32[]
      /// (hd) o_norm.weight
      ONorm: float32[]
      /// (D, Q) o_proj
      Wo: float32[] }

module GdnWeights =
    /// A deep copy (stages never share mutable arrays).
    let copy (w: GdnWeights) =
        { Wq = Array.copy w.Wq; Wk = Array.copy w.Wk; Wv = Array.copy w.Wv; Wg = Array.copy w.Wg
          Wa = Array.copy w.Wa; Wb = Array.copy w.Wb; ALog = Array.copy w.ALog; DtBias = Array.copy w.DtBias
          ONorm = Array.copy w.ONorm; Wo = Array.copy w.Wo }

    /// 5·D·H·hd + 2·D·H + 2H + hd (docs/method.md §3).
    let parameterCount (c: ModelConfig) =
        let D, H, hd = int64 c.Dim, int64 c.Heads, int64 c.HeadDim
        5L * D * H * hd + 2L * D * H + 2L * H + hd

/// A hybrid student.
type Student =
    { Config: ModelConfig
      /// Embeddings, norms, MLPs, lm_head and the kept layers' attention. The attention tensors of converted
      /// layers are not used (they may be empty arrays in a loaded student).
      Base: TeacherWeights
      /// Sorted indices of the layers that keep softmax attention.
      Kept: int list
      /// The GDN layer of every converted layer.
      Gdn: Map<int, GdnWeights>
      GqaExpand: GqaExpand
      /// The init strategy that produced it (CLI name).
      Init: string }

module Student =
    /// Indices of the converted (GDN) layers, ascending.
    let converted (s: Student) = s.Gdn |> Map.toList |> List.map fst

    /// Number of parameters: the teacher's, with each converted layer's attention replaced by a GDN layer.
    let parameterCount (s: Student) =
        let n (a: float32[]) = int64 a.Length
        let opt = Option.map n >> Option.defaultValue 0L
        let c = s.Config
        let teacherAttention =
            let q, kv, D = int64 c.QDim, int64 c.KvDim, int64 c.Dim
            2L * q * D + 2L * kv * D + (if c.QkvBias then q + 2L * kv else 0L) + (if c.OutputBias then D else 0L)
            + (if c.QkNorm then 2L * int64 c.HeadDim else 0L)
        let layer i (l: LayerWeights) =
            n l.AttnNorm + n l.MlpNorm + n l.Gate + n l.Up + n l.Down
            + (if s.Gdn.ContainsKey i then GdnWeights.parameterCount c else teacherAttention)
        n s.Base.Embedding + (s.Base.Layers |> Array.mapi layer |> Array.sum) + n s.Base.FinalNorm + opt s.Base.LmHead
