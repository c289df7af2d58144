/// The perplexity protocol: documents split at <|endoftext|>, trimmed, empties skipped; windows cut without
/// overlap, the partial one dropped; W−1 targets per window; PPL equals exp of the mean NLL computed here
/// independently from the logits in double; KL of a model to itself is 0.
module TaylorCalibrate.Tests.Model.PerplexityTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

let private config =
    { Family = ModelFamily.Llama; Dim = 16; Hidden = 24; Layers = 2; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 30
      Context = 16; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
      TiedEmbeddings = false; QkvBias = false; OutputBias = false; QkNorm = false }

let private teacher seed =
    let mutable s = seed
    let w =
        HfLayout.assemble config (fun name shape ->
            s <- s + 1
            let n = Array.fold (*) 1 shape
            let std = if name.EndsWith "norm.weight" then 0.0 else 0.3
            Ok(Rand.normal s std n |> Array.map (fun v -> if name.EndsWith "norm.weight" then 1f else v)))
        |> Result.defaultWith (fun e -> failtest (InputError.describe e))
    { Config = config; Weights = w; Source = { Path = "memory"; Format = "test"; DTypes = [] } }

let private orFailTest r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))

[<Tests>]
let tests =
    testList "Perplexity" [
        test "documents: split at the marker, trimmed, empties skipped" {
            let text = "  first story.\n<|endoftext|>\n\n<|endoftext|>\nsecond\n  <|endoftext|>   "
            Expect.equal (Corpus.documents text) [ "first story."; "second" ] "documents"
            Expect.equal (Corpus.documents "plain text, one document\n") [ "plain text, one document" ] "plain file" }

        test "tokenStreamUpTo stops after the document that reaches the limit; its prefix equals the full stream's" {
            let tok =
                { new ITokenizer with
                    member _.VocabSize = 300
                    member _.DocumentStart = Some 1
                    member _.Encode(s, start) = Array.append (if start then [| 1 |] else [||]) (s.ToCharArray() |> Array.map int)
                    member _.Decode ids = ""
                    member _.Piece id = string id
                    member _.Description = "chars" }
            let docs = [ "abc"; "de"; "fghij"; "k" ]
            let full = Corpus.tokenStream tok docs
            Expect.equal full.Length 15 "4 BOS + 11 chars"
            let part = Corpus.tokenStreamUpTo tok (Some 5) docs
            Expect.equal part full[.. 6] "first two documents (7 tokens) cover a limit of 5" }

        test "windows: non-overlapping, partial window dropped, max-tokens applied first" {
            let stream = Array.init 50 id
            let s = Perplexity.prepare "x" config stream (Some 16) None |> orFailTest
            Expect.equal (s.Windows, s.Window, s.Tokens.Length) (3, 16, 48) "3 windows of 16"
            let s2 = Perplexity.prepare "x" config stream None (Some 40) |> orFailTest
            Expect.equal (s2.Windows, s2.Window, s2.StreamTokens) (2, 16, 40) "default window = context; 40 tokens → 2 windows" }

        test "PPL = exp(mean NLL of tokens 2..W of each window), batching does not matter; KL to itself is 0" {
            let be = Backends.cpu.Get()
            let t = teacher 5
            use m = new DeviceDecoder(be, t)
            let stream = Rand.ints 3 config.Vocab 70
            let set = Perplexity.prepare "x" config stream (Some 8) None |> orFailTest
            let r = Perplexity.evaluate m (Some m) set None Threading.CancellationToken.None
            // Independent computation: one window at a time, log-softmax in double.
            let mutable nll = 0.0
            for w in 0 .. set.Windows - 1 do
                let ids = set.Tokens[w * 8 .. w * 8 + 7]
                let logits = Decoder.logits m ids 1 8
                for p in 0 .. 6 do
                    let row = Array.init config.Vocab (fun i -> float logits[p * config.Vocab + i])
                    let mx = Array.max row
                    let lse = mx + log (row |> Array.sumBy (fun z -> exp (z - mx)))
                    nll <- nll + lse - row[ids[p + 1]]
            Expect.equal r.Predicted (int64 (set.Windows * 7)) "W−1 targets per window"
            Expect.equal r.Windows 8 "70 tokens → 8 windows of 8"
            Expect.floatClose Accuracy.medium r.Nll (nll / float r.Predicted) "mean NLL"
            Expect.floatClose Accuracy.medium r.Perplexity (exp (nll / float r.Predicted)) "PPL"
            Expect.isLessThan (abs (defaultArg r.MeanKl nan)) 1e-5 "KL(p‖p) = 0" }

        test "mean KL(p_vs ‖ p_model) over the predicted positions matches a double computation" {
            let be = Backends.cpu.Get()
            use m = new DeviceDecoder(be, teacher 5)
            use reference = new DeviceDecoder(be, teacher 50)
            let stream = Rand.ints 4 config.Vocab 40
            let set = Perplexity.prepare "x" config stream (Some 16) None |> orFailTest
            let r = Perplexity.evaluate m (Some reference) set None Threading.CancellationToken.None
            let logSoftmax (row: float[]) =
                let mx = Array.max row
                let lse = mx + log (row |> Array.sumBy (fun z -> exp (z - mx)))
                row |> Array.map (fun z -> z - lse)
            let mutable kl = 0.0
            for w in 0 .. set.Windows - 1 do
                let ids = set.Tokens[w * 16 .. w * 16 + 15]
                let lm, lr = Decoder.logits m ids 1 16, Decoder.logits reference ids 1 16
                for p in 0 .. 14 do
                    let row (a: float32[]) = logSoftmax (Array.init config.Vocab (fun i -> float a[p * config.Vocab + i]))
                    let lp, lq = row lr, row lm
                    kl <- kl + Array.fold2 (fun acc a b -> acc + exp a * (a - b)) 0.0 lp lq
            let expected = kl / float r.Predicted
            Expect.isGreaterThan expected 1e-3 "the two models differ"
            Expect.floatClose Accuracy.medium (defaultArg r.MeanKl nan) expected "KL(vs ‖ model)" }
    ]
