/// Which teacher a derived artefact (a layer selection, a student) was made for: the teacher's configuration
/// as named fields and a SHA-256 fingerprint of its fp32 weights. The path is recorded for people but is not
/// part of the identity: the same model copied elsewhere is the same teacher, while a different model at the
/// same path is not.
module TaylorCalibrate.Pipeline.Model.TeacherIdentity

open System
open System.Globalization
open System.Runtime.InteropServices
open System.Security.Cryptography

/// A teacher's identity.
type TeacherIdentity =
    { /// Where the teacher was loaded from (informational).
      Path: string
      /// The configuration as (field, value) pairs in a fixed order, values in invariant round-trip text.
      Config: (string * string) list
      /// SHA-256 (lower-case hex) over every weight tensor in a fixed order, each tagged with its name and length.
      WeightsSha256: string }

let private num (v: float) = v.ToString("R", CultureInfo.InvariantCulture)
let private flag (b: bool) = if b then "true" else "false"

/// The configuration fields that define a teacher's shape, in a fixed order.
let configFields (c: ModelConfig) : (string * string) list =
    [ "family", ModelFamily.modelType c.Family
      "dim", string c.Dim
      "hidden", string c.Hidden
      "layers", string c.Layers
      "heads", string c.Heads
      "kv_heads", string c.KvHeads
      "head_dim", string c.HeadDim
      "vocab", string c.Vocab
      "context", string c.Context
      "norm_eps", num c.NormEps
      "rope_theta", num c.RopeTheta
      "rope_scaling",
      (match c.RopeScaling with
       | None -> "none"
       | Some s -> $"llama3 factor={num s.Factor} low={num s.LowFreqFactor} high={num s.HighFreqFactor} original={s.OriginalMaxPositions}")
      "rope_layout", string c.RopeLayout
      "tied_embeddings", flag c.TiedEmbeddings
      "qkv_bias", flag c.QkvBias
      "output_bias", flag c.OutputBias
      "qk_norm", flag c.QkNorm ]

/// SHA-256 of the weights. Each tensor contributes its name, its length and its little-endian fp32 bytes, so
/// moving values between tensors or dropping an optional one changes the fingerprint.
let weightsSha256 (w: TeacherWeights) : string =
    use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
    let add (name: string) (a: float32[] option) =
        hash.AppendData(Text.Encoding.UTF8.GetBytes name)
        match a with
        | None -> hash.AppendData(BitConverter.GetBytes -1L)
        | Some a ->
            hash.AppendData(BitConverter.GetBytes(int64 a.Length))
            hash.AppendData(MemoryMarshal.AsBytes(ReadOnlySpan a))
    add "embedding" (Some w.Embedding)
    w.Layers |> Array.iteri (fun i l ->
        let p = $"layers.{i}."
        add (p + "attn_norm") (Some l.AttnNorm)
        add (p + "wq") (Some l.Wq)
        add (p + "wk") (Some l.Wk)
        add (p + "wv") (Some l.Wv)
        add (p + "wo") (Some l.Wo)
        add (p + "bq") l.Bq
        add (p + "bk") l.Bk
        add (p + "bv") l.Bv
        add (p + "bo") l.Bo
        add (p + "q_norm") l.QNorm
        add (p + "k_norm") l.KNorm
        add (p + "mlp_norm") (Some l.MlpNorm)
        add (p + "gate") (Some l.Gate)
        add (p + "up") (Some l.Up)
        add (p + "down") (Some l.Down))
    add "final_norm" (Some w.FinalNorm)
    add "lm_head" w.LmHead
    Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant()

/// The identity of a loaded teacher.
let ofTeacher (path: string) (t: Teacher) : TeacherIdentity =
    { Path = path; Config = configFields t.Config; WeightsSha256 = weightsSha256 t.Weights }

/// None when `actual` is the teacher `expected` describes; otherwise what differs, for an error message:
/// the differing configuration fields, or the weight fingerprints when the shapes agree.
let mismatch (expected: TeacherIdentity) (actual: TeacherIdentity) : string option =
    let exp = Map expected.Config
    let act = Map actual.Config
    let fields = (expected.Config @ actual.Config) |> List.map fst |> List.distinct
    let differing =
        fields |> List.choose (fun f ->
            let show m = Map.tryFind f m |> Option.defaultValue "(absent)"
            if Map.tryFind f exp <> Map.tryFind f act then Some $"{f} {show exp} vs {show act}" else None)
    if not differing.IsEmpty then Some("configuration differs: " + String.Join(", ", differing))
    elif expected.WeightsSha256 <> actual.WeightsSha256 then
        Some $"same configuration but different weights (sha256 {expected.WeightsSha256[..11]}… vs {actual.WeightsSha256[..11]}…)"
    else None
