/// The heap-based encoders (Tok512, ByteLevelBpe) give exactly the reference encoders' ids on varied text,
/// and the part-by-part encoding stops early with a prefix of the full result.
module TaylorCalibrate.Tests.Text.EncoderTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model

let private tok512 () =
    let path = Shared.requireShared "models/stories260K/tok512.bin"
    Tok512.load path |> Result.defaultWith (fun e -> failtest (InputError.describe e))

/// Random text drawn from `alphabet` (strings, so multi-char code points stay whole).
let private randomText (seed: int) (alphabet: string[]) (n: int) =
    let r = Random seed
    String.Join("", Array.init n (fun _ -> alphabet[r.Next alphabet.Length]))

let private mixedAlphabet =
    [| yield! [ "a"; "e"; "i"; "o"; "t"; "h"; "n"; "s"; "r"; "l"; "T"; "S" ] |> List.replicate 4 |> List.concat
       " "; " "; " "; " "; " "; "\n"; "\n\n"; "."; ","; "!"; "\""; "'"; "-"; "1"; "7"; "é"; "日"; "🙂"; "\t"; "  " |]

/// Prefixes of the whole-text encoding that the part-by-part encoder hands out when stopped after part k.
let private stoppedAfter (inc: IIncrementalTokenizer) (text: string) (parts: int) =
    let mutable seen = 0
    inc.EncodeWhile(text, true, Func<int, int, bool>(fun _ _ -> seen <- seen + 1; seen < parts))

/// A byte-level tokenizer.json whose merges were built at random over a few letters and then shuffled, so
/// that ranks are out of the usual order (a merge can outrank the merges that build its halves).
let private randomMergeTokenizer (seed: int) : ByteLevelBpe.ByteLevelBpeTokenizer =
    let r = Random seed
    let letters = [| "a"; "b"; "c"; "d"; "Ġ"; "Ċ" |]
    let tokens = Collections.Generic.List<string>(letters)
    let merges = Collections.Generic.List<string * string>()
    let known = Collections.Generic.HashSet<string>(letters)
    while merges.Count < 80 do
        let a = tokens[r.Next tokens.Count]
        let b = tokens[r.Next tokens.Count]
        if (a + b).Length <= 6 && known.Add(a + b) then
            merges.Add((a, b))
            tokens.Add(a + b)
    let shuffled = merges.ToArray() |> Array.sortBy (fun _ -> r.Next())
    let _, path =
        TokenizerTests.tinyTokenizerWith (fun root ->
            let vocab = JsonObject()
            for b in 0 .. 255 do vocab[string ByteLevelBpe.byteToChar[b]] <- JsonValue.Create b
            merges |> Seq.iteri (fun i (a, b) -> vocab[a + b] <- JsonValue.Create(256 + i))
            root["model"]["vocab"] <- vocab
            root["model"]["merges"] <- JsonArray([| for a, b in shuffled -> JsonValue.Create(a + " " + b) :> JsonNode |])
            // GPT-2 pre-tokenisation (letters runs with one leading space), and the added tokens past the merges.
            root["pre_tokenizer"] <- JsonNode.Parse """{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}"""
            root["added_tokens"] <- JsonNode.Parse $"""[{{"id": {256 + merges.Count}, "content": "<|begin_of_text|>", "special": true}}]""")
    ByteLevelBpe.load path |> Result.defaultWith (fun e -> failtest (InputError.describe e))

[<Tests>]
let tests =
    testList "Encoders" [
        test "tok512: the heap encoder equals run.c's rescanning loop on stories and random text" {
            let t = tok512 ()
            let tok = t :> ITokenizer
            let stories = File.ReadAllText(Shared.requireShared "data/tinystories/valid-head.txt")
            let texts =
                [ for start in [ 0; 100_000; 400_000 ] -> stories.Substring(start, 6000)
                  for seed in 1 .. 4 -> randomText seed mixedAlphabet 3000
                  yield! [ "a"; " "; "\n"; ""; "日本"; String('a', 2000); String(' ', 1500) + "x" ] ]
            for s in texts do
                for start in [ true; false ] do
                    Expect.equal (tok.Encode(s, start)) (EncoderReference.tok512Encode t s start) $"text of {s.Length} chars starting {s.Substring(0, min 20 s.Length)}" }

        test "tok512: stopping after a part gives a strict prefix of the whole encoding" {
            let t = tok512 ()
            let text = File.ReadAllText(Shared.requireShared "data/tinystories/valid-head.txt").Substring(0, 20_000)
            let full = (t :> ITokenizer).Encode(text, true)
            let one = stoppedAfter t text 1
            let three = stoppedAfter t text 3
            Expect.isLessThan one.Length three.Length "three parts are more than one"
            Expect.isLessThan three.Length (full.Length / 4) "20,000 chars are cut into parts of about 512"
            Expect.equal three full[.. three.Length - 1] "prefix of the whole encoding" }

        test "byte-level BPE: the heap merge equals GPT-2's rank loop under shuffled merge ranks" {
            for seed in 1 .. 3 do
                let t = randomMergeTokenizer seed
                let tok = t :> ITokenizer
                let words = [| "a"; "b"; "c"; "d"; "ab"; "abcd"; "dcba"; "aaaa"; "bbbbbbbb" |]
                let texts =
                    [ randomText (10 + seed) [| yield! words; " "; " "; "\n"; ". "; "  " |] 4000
                      String('a', 300); String('b', 301) + " " + String('c', 7); "abababababababababab cdcdcdcdcdcdcd" ]
                for s in texts do
                    Expect.equal (tok.Encode(s, false)) (EncoderReference.bpeEncodeOrdinary t.Model s) $"seed {seed}, text {s.Substring(0, min 20 s.Length)}" }

        test "byte-level BPE: stopping after a part gives a strict prefix; the first-character lookup of added tokens still finds them" {
            let tok, _ = TokenizerTests.tinyTokenizer ()
            let text = String.Join("<|endoftext|>", Array.init 40 (fun i -> $"hello the story number {i} " + String('w', 30) + " the end. "))
            let full = tok.Encode(text, true)
            Expect.equal (full |> Array.filter ((=) 263) |> Array.length) 39 "every <|endoftext|> found"
            let part = stoppedAfter (tok :?> IIncrementalTokenizer) text 2
            Expect.isLessThan part.Length (full.Length / 2) "stopped early"
            Expect.equal part full[.. part.Length - 1] "prefix of the whole encoding" }

        test "tokenStreamWith stops inside a long document at the limit and reports progress up to it" {
            let t = tok512 ()
            let text = File.ReadAllText(Shared.requireShared "data/tinystories/valid-head.txt").Replace(Corpus.documentSeparator, "")
            let docs = [ text.Substring(0, 200_000) ]
            let reports = Collections.Generic.List<Corpus.EncodeProgress>()
            let progress = { new IProgress<Corpus.EncodeProgress> with member _.Report p = reports.Add p }
            let part = Corpus.tokenStreamWith t (Some 4096) (Some progress) docs
            let full = Corpus.tokenStream t docs
            Expect.isGreaterThanOrEqual part.Length 4096 "at least the limit"
            Expect.isLessThan part.Length (full.Length / 4) "stopped inside the document"
            Expect.equal part full[.. part.Length - 1] "prefix of the full stream"
            let all = Collections.Generic.List<Corpus.EncodeProgress>()
            Corpus.tokenStreamWith t None (Some { new IProgress<Corpus.EncodeProgress> with member _.Report p = all.Add p }) docs |> ignore
            Expect.isGreaterThan all.Count 2 "several reports over 200,000 chars"
            Expect.isTrue (all |> Seq.pairwise |> Seq.forall (fun (a, b) -> a.CharsDone <= b.CharsDone)) "monotone"
            Expect.equal all[all.Count - 1].CharsDone 200_000L "ends at the corpus length"
            Expect.equal all[all.Count - 1].Tokens full.Length "with every token" }
    ]
