/// Loads llama2.c checkpoints (karpathy/llama2.c run.c, "legacy" export): 7 little-endian int32
/// (dim, hidden, layers, heads, kv_heads, vocab — negative when a separate classifier follows — seq_len),
/// then fp32 [out,in] arrays grouped by kind across layers (docs/platform.md). RoPE pairs adjacent coordinates,
/// θ = 10000, RMSNorm eps 1e-5.
module TaylorCalibrate.Pipeline.Model.Llama2c

open System
open System.IO
open System.Runtime.InteropServices
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline

/// The header of a llama2.c checkpoint, as a config (Family Llama, adjacent RoPE pairs).
let configOfHeader (path: string) (h: int[]) : Result<ModelConfig, InputError> =
    let names = [| "dim"; "hidden_dim"; "n_layers"; "n_heads"; "n_kv_heads"; "vocab_size"; "seq_len" |]
    match h |> Array.indexed |> Array.tryFind (fun (i, v) -> (if i = 5 then abs v else v) <= 0) with
    | Some(i, v) -> Error(CorruptFile(path, $"header field {names[i]} = {v} must be positive (not a llama2.c checkpoint?)"))
    | None ->
    let dim, hidden, layers, heads, kvHeads, vocab, seqLen = h[0], h[1], h[2], h[3], h[4], h[5], h[6]
    if dim % heads <> 0 then Error(CorruptFile(path, $"dim {dim} is not a multiple of n_heads {heads}"))
    elif heads % kvHeads <> 0 then Error(CorruptFile(path, $"n_heads {heads} is not a multiple of n_kv_heads {kvHeads}"))
    elif (dim / heads) % 2 <> 0 then Error(CorruptFile(path, $"head size {dim / heads} is odd; RoPE needs pairs"))
    else
    Ok { Family = ModelFamily.Llama
         Dim = dim; Hidden = hidden; Layers = layers; Heads = heads; KvHeads = kvHeads; HeadDim = dim / heads
         Vocab = abs vocab; Context = seqLen; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None
         RopeLayout = RopeLayout.Adjacent; TiedEmbeddings = vocab > 0
         QkvBias = false; OutputBias = false; QkNorm = false }

/// Loads a `.bin` checkpoint.
let load (path: string) : Result<Teacher, InputError> =
    if not (File.Exists path) then Error(FileNotFound path) else
    let bytes = File.ReadAllBytes path
    if bytes.Length < 28 then Error(CorruptFile(path, $"{bytes.Length} bytes is too short for the 28-byte llama2.c header")) else
    let header = MemoryMarshal.Cast<byte, int>(ReadOnlySpan(bytes, 0, 28)).ToArray()
    configOfHeader path header
    |> Result.bind (fun c ->
        let d, f, l, v, kv = int64 c.Dim, int64 c.Hidden, int64 c.Layers, int64 c.Vocab, int64 c.KvDim
        let ropeTables = 2L * int64 c.Context * int64 (c.HeadDim / 2)
        let floats =
            v * d + l * d + l * d * d + 2L * l * kv * d + l * d * d + l * d + 3L * l * f * d + d + ropeTables
            + (if c.TiedEmbeddings then 0L else v * d)
        // The same sum in doubles: a forged header (dim 2^30) overflows the int64 one into a small or negative
        // number that a short file would pass. Below 2^53 the double is exact, above it the check still fails.
        let floatsExact =
            let d, f, l, v, kv, rope = float d, float f, float l, float v, float kv, float ropeTables
            v * d + l * d + l * d * d + 2.0 * l * kv * d + l * d * d + l * d + 3.0 * l * f * d + d + rope
            + (if c.TiedEmbeddings then 0.0 else v * d)
        let expected = 28L + 4L * floats
        if float bytes.Length < 28.0 + 4.0 * floatsExact then
            Error(CorruptFile(path, $"has {bytes.Length} bytes, the header's shapes need {28.0 + 4.0 * floatsExact:G6} (truncated, or not a llama2.c checkpoint)"))
        elif int64 bytes.Length < expected then
            Error(CorruptFile(path, $"has {bytes.Length} bytes, the header's shapes need {expected} (truncated, or not a llama2.c checkpoint)"))
        else
        let mutable pos = 28
        let take (n: int64) =
            let a = Array.zeroCreate<float32> (int n)
            Buffer.BlockCopy(bytes, pos, a, 0, 4 * int n)
            pos <- pos + 4 * int n
            a
        let perLayer (n: int64) = Array.init c.Layers (fun _ -> take n)
        let embedding = take (v * d)
        let attnNorm = perLayer d
        let wq = perLayer (d * d)
        let wk = perLayer (kv * d)
        let wv = perLayer (kv * d)
        let wo = perLayer (d * d)
        let mlpNorm = perLayer d
        let w1 = perLayer (f * d)
        let w2 = perLayer (d * f)
        let w3 = perLayer (f * d)
        let finalNorm = take d
        pos <- pos + 4 * int ropeTables // legacy freq_cis tables: recomputed from θ instead
        let classifier = if c.TiedEmbeddings then None else Some(take (v * d))
        let layers =
            Array.init c.Layers (fun i ->
                { AttnNorm = attnNorm[i]; Wq = wq[i]; Wk = wk[i]; Wv = wv[i]; Wo = wo[i]
                  Bq = None; Bk = None; Bv = None; Bo = None; QNorm = None; KNorm = None
                  MlpNorm = mlpNorm[i]; Gate = w1[i]; Up = w3[i]; Down = w2[i] })
        Ok { Config = c
             Weights = { Embedding = embedding; Layers = layers; FinalNorm = finalNorm; LmHead = classifier }
             Source = { Path = path; Format = "llama2.c"; DTypes = [ "F32" ] } })
