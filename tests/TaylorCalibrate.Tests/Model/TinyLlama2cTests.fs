/// A llama2.c checkpoint written byte by byte here (header, weights grouped by kind across layers, the legacy
/// RoPE tables, an optional classifier: docs/platform.md) loads into the right tensors and runs with RoPE on
/// ADJACENT coordinate pairs (2i, 2i+1), as llama2.c's run.c does: the backend forward matches the f64
/// reference forced to adjacent pairs and not the half-split one. Needs nothing from ../shared.
/// A llama2.c tokenizer file is written here too (control pieces, the 256 byte-fallback pieces, a few merges)
/// so run.c's encoding rules (BOS, dummy-prefix space, byte fallback, highest-score merge first) are checked
/// without tok512.bin.
/// The window protocol of the perplexity is pinned here as well, on a stream that is an exact multiple of W,
/// where dropping the last full window is an off-by-one that a stream with a remainder would hide.
module TaylorCalibrate.Tests.Model.TinyLlama2cTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model.TeacherForwardTests

let private dim, hidden, layers, heads, kvHeads, vocab, seqLen = 16, 24, 2, 4, 2, 20, 32
let private hd = dim / heads

/// The arrays of the checkpoint in file order, with their names.
let private arrays (untied: bool) =
    let kv = kvHeads * hd
    let mutable seed = 500
    let rnd n =
        seed <- seed + 1
        Rand.normal seed 0.3 n
    let norm n =
        seed <- seed + 1
        Rand.uniform seed 0.8 1.2 n
    [ yield "embedding", rnd (vocab * dim)
      yield "attn_norm", norm (layers * dim)
      yield "wq", rnd (layers * dim * dim)
      yield "wk", rnd (layers * kv * dim)
      yield "wv", rnd (layers * kv * dim)
      yield "wo", rnd (layers * dim * dim)
      yield "mlp_norm", norm (layers * dim)
      yield "w1", rnd (layers * hidden * dim)
      yield "w2", rnd (layers * dim * hidden)
      yield "w3", rnd (layers * hidden * dim)
      yield "final_norm", norm dim
      // freq_cis_real and freq_cis_imag (seq_len, hd/2) each: skipped by the loader, so filled with junk.
      yield "rope_tables", Array.create (2 * seqLen * hd / 2) 123f
      if untied then yield "classifier", rnd (vocab * dim) ]

/// Writes the checkpoint; a negative vocab_size in the header announces the separate classifier.
let private write (path: string) (untied: bool) =
    let parts = arrays untied
    use w = new BinaryWriter(File.Create path)
    for v in [ dim; hidden; layers; heads; kvHeads; (if untied then -vocab else vocab); seqLen ] do w.Write(int32 v)
    for _, a in parts do
        for v in a do w.Write(v: float32)
    Map parts

let private slice (a: float32[]) (layer: int) (n: int) = a[layer * n .. (layer + 1) * n - 1]

let private load (untied: bool) =
    let path = Path.Combine(Path.GetTempPath(), $"tc-llama2c-{Guid.NewGuid():N}.bin")
    try
        let parts = write path untied
        let t = ModelFiles.loadTeacher path |> orFailTest
        parts, t
    finally File.Delete path

/// Pieces 0 <unk>, 1 BOS, 2 EOS, 3..258 <0x00>..<0xFF>, then " " 259, "a" 260, "b" 261, "ab" 262 (score −1),
/// " ab" 263 (−2), "ba" 264 (−0.5).
let private tinyTokenizer () =
    let pieces =
        [ yield "<unk>", 0f; yield "\n<s>\n", 0f; yield "\n</s>\n", 0f
          for b in 0 .. 255 -> $"<0x{b:X2}>", 0f
          yield " ", 0f; yield "a", 0f; yield "b", 0f; yield "ab", -1f; yield " ab", -2f; yield "ba", -0.5f ]
    let path = Path.Combine(Path.GetTempPath(), $"tc-tok-{Guid.NewGuid():N}.bin")
    try
        do
            use w = new BinaryWriter(File.Create path)
            w.Write(int32 8)
            for text, score in pieces do
                let bytes = System.Text.Encoding.UTF8.GetBytes(text: string)
                w.Write(score: float32)
                w.Write(int32 bytes.Length)
                w.Write bytes
        Tok512.load path |> orFailTest :> ITokenizer
    finally File.Delete path

[<Tests>]
let tests =
    testList "Llama2c (tiny, in memory)" [
        for untied in [ false; true ] do
            let label = if untied then "separate classifier" else "tied classifier"
            yield test $"{label}: header and every weight land in the right tensor" {
                let parts, t = load untied
                let c = t.Config
                Expect.equal (c.Dim, c.Hidden, c.Layers, c.Heads, c.KvHeads, c.HeadDim, c.Vocab, c.Context)
                             (dim, hidden, layers, heads, kvHeads, hd, vocab, seqLen) "config from the header"
                Expect.equal (c.NormEps, c.RopeTheta, c.TiedEmbeddings) (1e-5, 10000.0, not untied) "llama2.c constants"
                let w = t.Weights
                Expect.equal w.Embedding parts["embedding"] "token embedding"
                Expect.equal w.FinalNorm parts["final_norm"] "final norm"
                Expect.equal w.LmHead (if untied then Some parts["classifier"] else None) "classifier"
                let kv = kvHeads * hd
                for l in 0 .. layers - 1 do
                    let layer = w.Layers[l]
                    for name, actual, n in
                        [ "attn_norm", layer.AttnNorm, dim; "wq", layer.Wq, dim * dim; "wk", layer.Wk, kv * dim; "wv", layer.Wv, kv * dim
                          "wo", layer.Wo, dim * dim; "mlp_norm", layer.MlpNorm, dim; "w1", layer.Gate, hidden * dim
                          "w2", layer.Down, dim * hidden; "w3", layer.Up, hidden * dim ] do
                        Expect.equal actual (slice parts[name] l n) $"layer {l} {name}"
            }

        yield test "forward uses adjacent RoPE pairs: matches the adjacent f64 reference, not the half-split one" {
            let _, t = load true
            let ids = Rand.ints 7 vocab 9
            use m = new DeviceDecoder(Backends.cpu.Get(), t)
            let got = Decoder.logits m ids 1 ids.Length
            let reference layout = Reference.forward { t.Config with RopeLayout = layout } t.Weights ids |> Array.concat
            // fp32 forward vs f64 reference, as TeacherForwardTests (relative RMS 1e-4).
            Numeric.close forwardRelTol 1e-4 (reference RopeLayout.Adjacent) got "logits vs the adjacent-pair reference"
            // The pairing must matter on this input for the check above to mean anything.
            let halfSplit = reference RopeLayout.HalfSplit
            Expect.isGreaterThan (Numeric.relRms halfSplit got) 1e-2 "the half-split pairing gives other logits"
        }

        yield test "llama2.c tokenizer: BOS, dummy prefix, highest-score merge first, byte fallback, decode" {
            let tok = tinyTokenizer ()
            Expect.equal tok.VocabSize 265 "pieces"
            // " a b a b": "ba" (−0.5) beats "ab" (−1); afterwards no pair of " ", a, ba, b is a piece.
            Expect.equal (tok.Encode("abab", true)) [| 1; 259; 260; 264; 261 |] "BOS, dummy prefix, ba merged first"
            // " a b": "ab" (−1) first, then " ab" (−2).
            Expect.equal (tok.Encode("ab", false)) [| 263 |] "merges repeat until no pair is a piece"
            // é has no piece: its UTF-8 bytes C3 A9 become <0xC3> <0xA9> = 3 + byte.
            Expect.equal (tok.Encode("\u00e9", false)) [| 259; 3 + 0xC3; 3 + 0xA9 |] "byte fallback"
            Expect.equal (tok.Encode("", true)) [| 1 |] "empty text is BOS only (no dummy prefix)"
            Expect.equal (tok.Decode [| 1; 263; 264; 3 + 0xC3; 3 + 0xA9 |]) "abba\u00e9" "the space after BOS is dropped, bytes reassembled"
        }

        yield test "perplexity windows: a stream of exactly 3·W tokens gives 3 windows and 3·(W−1) targets, all scored" {
            let _, t = load false
            let W = 8
            let stream = Rand.ints 8 vocab (3 * W)
            let set = Perplexity.prepare "x" t.Config stream (Some W) None |> orFailTest
            Expect.equal (set.Windows, set.Tokens.Length) (3, 3 * W) "no window dropped"
            use m = new DeviceDecoder(Backends.cpu.Get(), t)
            let r = Perplexity.evaluate m None set None CancellationToken.None
            Expect.equal (r.Windows, r.Predicted, r.Tokens) (3, int64 (3 * (W - 1)), int64 (3 * W)) "windows, targets, tokens"
            // Independent NLL of every window, log-softmax in double.
            let mutable nll = 0.0
            for w in 0 .. 2 do
                let ids = stream[w * W .. w * W + W - 1]
                let logits = Reference.forward t.Config t.Weights ids
                for p in 0 .. W - 2 do
                    let row = logits[p]
                    let mx = Array.max row
                    nll <- nll + mx + log (row |> Array.sumBy (fun z -> exp (z - mx))) - row[ids[p + 1]]
            // fp32 logits and cross-entropy vs f64: ~1e-6 relative on a sum of 21 NLLs.
            Expect.floatClose { absolute = 0.0; relative = 1e-4 } r.TotalNll nll "total NLL over all three windows"
            // With one more token the remainder is dropped, still 3 windows.
            let more = Perplexity.prepare "x" t.Config (Array.append stream [| 0 |]) (Some W) None |> orFailTest
            Expect.equal more.Windows 3 "3·W + 1 tokens: the partial window is dropped"
        }
    ]
