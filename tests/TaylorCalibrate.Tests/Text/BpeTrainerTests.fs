/// The byte-level BPE trainer: merges by hand on a tiny text, the incremental counts against a naive
/// recount, and the written tokenizer.json through the existing reader (round trips, document start).
module TaylorCalibrate.Tests.Text.BpeTrainerTests

open System
open System.Collections.Generic
open System.IO
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

/// Recounts every pair after every merge and takes the most frequent, ties to the smallest
/// (left id, right id): the trainer's stated rule without its incremental bookkeeping.
let private naiveMerges (vocabSize: int) (documents: string list) : (string * string) list =
    let counts = BpeTrainer.countPreTokens documents
    let ids = Dictionary<string, int>()
    let tokens = List<string>(ByteLevelBpe.byteToChar |> Array.map string)
    tokens |> Seq.iteri (fun i t -> ids[t] <- i)
    let words = [ for kv in counts -> List<string>(kv.Key |> Seq.map string), kv.Value ]
    let merges = List<string * string>()
    let mutable go = true
    while go && tokens.Count < vocabSize - 1 do
        let pairs = Dictionary<struct (int * int), int64>()
        for w, n in words do
            for i in 0 .. w.Count - 2 do
                let p = struct (ids[w[i]], ids[w[i + 1]])
                pairs[p] <- (match pairs.TryGetValue p with | true, c -> c | _ -> 0L) + n
        if pairs.Count = 0 then go <- false
        else
            let best = pairs |> Seq.minBy (fun kv -> let struct (l, r) = kv.Key in (-kv.Value, l, r))
            let struct (l, r) = best.Key
            let left, right = tokens[l], tokens[r]
            merges.Add((left, right))
            if not (ids.ContainsKey(left + right)) then
                tokens.Add(left + right)
                ids[left + right] <- tokens.Count - 1
            for w, _ in words do
                let mutable i = 0
                while i < w.Count - 1 do
                    if w[i] = left && w[i + 1] = right then
                        w[i] <- left + right
                        w.RemoveAt(i + 1)
                    i <- i + 1
    List.ofSeq merges

let private saved (t: BpeTrainer.TrainedBpe) =
    let dir = Path.Combine(Path.GetTempPath(), "tc-bpe-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory dir |> ignore
    let path = Path.Combine(dir, "tokenizer.json")
    BpeTrainer.save path t
    path, (ByteLevelBpe.load path |> Result.defaultWith (fun e -> failtest (InputError.describe e)) :> ITokenizer)

let private sampleText () =
    // A fixed, varied text: English-like words, digits, punctuation, newlines, non-ASCII.
    let words = [| "the"; "cat"; "sat"; "on"; "mat"; "and"; "then"; "there"; "was"; "a"; "dog"; "42"; "1999"; "naïve"; "café"; "日本"; "!"; ","; "."; "\n"; "\n\n"; "it's" |]
    let r = Random 7
    String.Join(" ", Array.init 3000 (fun _ -> words[r.Next words.Length]))

[<Tests>]
let tests =
    testList "BPE trainer" [
        test "tiny text: merges follow the pair counts by hand, ties to the smallest ids" {
            // Pre-tokens "ab", "Ġab" ×2, "Ġcd". Counts: (a,b) 3, (Ġ,a) 2, (Ġ,c) 1, (c,d) 1 → "ab".
            // Then (Ġ,ab) 2 → "Ġab". Then (Ġ,c) and (c,d) tie at 1: Ġ is byte 0x20 (id 32) < c (99) → "Ġc";
            // then (Ġc,d) → "Ġcd".
            let t = BpeTrainer.train (256 + 4 + 1) None [ "ab ab ab cd" ]
            Expect.equal (List.ofArray t.Merges) [ "a", "b"; "Ġ", "ab"; "Ġ", "c"; "Ġc", "d" ] "merges"
            Expect.equal t.Tokens[256 ..] [| "ab"; "Ġab"; "Ġc"; "Ġcd" |] "new tokens"
            Expect.equal t.DocumentStart 260 "the special token comes last" }

        test "incremental pair counts learn the same merges as recounting after every merge" {
            let docs = [ sampleText (); "aaaa aaa aa a bbbb abab ababab"; String('x', 50) ]
            let fast = BpeTrainer.train 400 None docs
            Expect.equal (List.ofArray fast.Merges) (naiveMerges 400 docs) "same merges in the same order"
            Expect.equal (BpeTrainer.train 300 None docs).Tokens.Length 299 "vocabulary full (300 with the special token)" }

        test "training stops when no pair is left, and is deterministic" {
            let a = BpeTrainer.train 1000 None [ "abc abc" ]
            Expect.isLessThan a.Tokens.Length 300 "few merges possible"
            Expect.equal (BpeTrainer.toJson (BpeTrainer.train 500 None [ sampleText () ])) (BpeTrainer.toJson (BpeTrainer.train 500 None [ sampleText () ])) "same bytes" }

        test "the written tokenizer.json loads; encoding reproduces training pieces; round trips; document start" {
            let t = BpeTrainer.train 300 None [ "ab ab ab cd"; sampleText () ]
            let path, tok = saved t
            Expect.equal tok.VocabSize 300 "bytes + merges + <|endoftext|>"
            Expect.equal tok.DocumentStart (Some t.DocumentStart) "<|endoftext|> starts documents"
            let ids = tok.Encode("the cat", true)
            Expect.equal ids[0] t.DocumentStart "BOS first"
            let theCat = tok.Encode(" the cat", false) |> Array.map tok.Piece
            Expect.equal theCat [| "Ġthe"; "Ġcat" |] "frequent words are single tokens"
            for s in [ sampleText (); "unseen: Zebras größer 🙂 \t tabs\r\n"; "" ; "<|endoftext|>in between<|endoftext|>" ] do
                let back = tok.Decode(tok.Encode(s, true))
                Expect.equal back (s.Replace("<|endoftext|>", "")) $"round trip of {s.Substring(0, min 20 s.Length)}"
            Expect.stringContains (File.ReadAllText path) "\"TemplateProcessing\"" "post-processor written" }

        test "a vocabulary below 258 is refused, naming the option" {
            match BpeTrainer.checkVocabSize "--bpe-vocab" 100 with
            | Ok _ -> failtest "accepted 100"
            | Error e -> Expect.stringContains (InputError.describe e) "--bpe-vocab: must be at least 258" "message" }
    ]
