/// Token streams: rows follow the data convention, reading is deterministic, seeking equals replaying,
/// shuffles are permutations, positions round-trip, and document splits are disjoint.
module TaylorCalibrate.Tests.Data.TokenStreamTests

open System
open System.IO
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

let private orFailTest r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))

/// Documents of distinct tokens (document d holds 1000·d + 0, 1, ...), lengths 1..40, so that every token
/// says where it came from.
let private distinctDocs (n: int) (seed: int) =
    let lengths = Rand.ints seed 40 n
    Array.init n (fun d -> Array.init (lengths[d] + 1) (fun i -> 1000 * (d + 1) + i))

let private spec t mode seed = { SeqLen = t; Shuffle = mode; Seed = seed }

let private epochRows (s: TokenStream) (epoch: int) = [ for r in 0L .. s.Rows - 1L -> s.RowAt(epoch, r) ]

/// A tokenizer that maps each character to its code, with document start 1.
let private charTokenizer =
    { new ITokenizer with
        member _.VocabSize = 65536
        member _.DocumentStart = Some 1
        member _.Encode(s, start) = Array.append (if start then [| 1 |] else [||]) (s.ToCharArray() |> Array.map int)
        member _.Decode ids = ""
        member _.Piece id = string id
        member _.Description = "chars" }

let private doc name text = { Name = name; Text = text }

[<Tests>]
let tests =
    testList "Token streams" [
        test "in order: documents with their starts, concatenated, rows of T+1 with stride T, remainder dropped" {
            let docs = [| doc "a" "hello world"; doc "b" "second document"; doc "c" "x" |]
            let s = TokenStream.ofDocuments "test" charTokenizer (spec 5 InOrder 0UL) None docs |> orFailTest
            let flat = Corpus.tokenStream charTokenizer [ for d in docs -> d.Text ]
            Expect.equal s.Tokens (int64 flat.Length) "every token"
            Expect.equal s.Rows (int64 ((flat.Length - 1) / 5)) "rows = (N - 1) / T"
            for r in 0 .. int s.Rows - 1 do
                Expect.equal (s.RowAt(0, int64 r)) flat[r * 5 .. r * 5 + 5] $"row {r}" }

        test "deterministic: the same data and spec read the same rows; another seed reads others" {
            for mode in [ ShuffleRows; ShuffleDocuments ] do
                let docs = distinctDocs 50 1
                let a = TokenStream.create "a" (spec 7 mode 42UL) docs |> orFailTest
                let b = TokenStream.create "b" (spec 7 mode 42UL) (distinctDocs 50 1) |> orFailTest
                let c = TokenStream.create "c" (spec 7 mode 43UL) docs |> orFailTest
                for e in 0 .. 2 do Expect.equal (epochRows a e) (epochRows b e) $"{mode} epoch {e}"
                Expect.notEqual (epochRows a 0) (epochRows c 0) $"{mode}: another seed"
                Expect.notEqual (epochRows a 0) (epochRows a 1) $"{mode}: epochs differ"
                Expect.equal a.Fingerprint b.Fingerprint "same fingerprint"
                Expect.notEqual a.Fingerprint c.Fingerprint "the seed is part of the fingerprint" }

        test "seek equals replay: advancing n rows lands where reading n rows does, across epochs" {
            for mode in [ InOrder; ShuffleRows; ShuffleDocuments ] do
                let s = TokenStream.create "s" (spec 6 mode 7UL) (distinctDocs 30 2) |> orFailTest
                let mutable p = TokenStream.start s
                let read = Collections.Generic.List<int[]>()
                let n = int s.Rows * 2 + 5
                for _ in 1 .. n do
                    let row, q = TokenStream.next s p
                    read.Add row
                    p <- q
                for k in [ 0; 1; int s.Rows - 1; int s.Rows; n - 3 ] do
                    let q = TokenStream.advance s (TokenStream.start s) (int64 k)
                    Expect.equal (fst (TokenStream.next s q)) read[k] $"{mode}: row after seeking {k}"
                Expect.equal (TokenStream.advance s (TokenStream.start s) (int64 n)) p $"{mode}: position after {n} rows"
                Expect.equal p.Epoch 2 "two epochs and a bit"
                let batch, after = TokenStream.batch s (TokenStream.start s) 4
                Expect.equal batch (Array.concat (read.GetRange(0, 4))) $"{mode}: a batch is rows in order"
                Expect.equal after (TokenStream.advance s (TokenStream.start s) 4L) "batch position" }

        test "shuffling rows permutes the in-order rows" {
            let docs = distinctDocs 60 3
            let ordered = TokenStream.create "o" (spec 9 InOrder 0UL) docs |> orFailTest
            let shuffled = TokenStream.create "s" (spec 9 ShuffleRows 5UL) docs |> orFailTest
            let key (r: int[]) = String.Join(",", r)
            let sorted rows = rows |> List.map key |> List.sort
            for e in 0 .. 2 do
                Expect.equal (sorted (epochRows shuffled e)) (sorted (epochRows ordered 0)) $"epoch {e} is a permutation"
            Expect.notEqual (epochRows shuffled 0) (epochRows ordered 0) "not the identity" }

        test "shuffling documents reads each document once per epoch, whole and in a new order" {
            let docs = distinctDocs 40 4
            let s = TokenStream.create "s" (spec 8 ShuffleDocuments 11UL) docs |> orFailTest
            for e in 0 .. 2 do
                let rows = epochRows s e
                // The epoch's concatenation, as far as rows cover it (neighbouring rows share one token).
                let flat = Array.append rows.Head (rows.Tail |> List.map (fun r -> r[1..]) |> Array.concat)
                Expect.equal (int64 flat.Length) (s.Rows * 8L + 1L) "rows cover rows·T + 1 tokens"
                let order = Collections.Generic.List<int>()
                let mutable i = 0
                while i < flat.Length do
                    let d = flat[i] / 1000 - 1
                    Expect.equal flat[i] (docs[d][0]) $"epoch {e}: a document starts at {i}"
                    let n = min docs[d].Length (flat.Length - i)
                    Expect.equal (flat[i .. i + n - 1]) (docs[d][.. n - 1]) $"epoch {e}: document {d} whole"
                    order.Add d
                    i <- i + n
                Expect.equal (order.Count) (order |> Seq.distinct |> Seq.length) $"epoch {e}: no document twice"
                Expect.isGreaterThanOrEqual order.Count 38 $"epoch {e}: all but the cut-off tail documents"
                Expect.notEqual (List.ofSeq order) (List.init order.Count id) $"epoch {e}: not the corpus order" }

        test "positions round-trip through int64s and JSON; a position of other data is refused" {
            let s = TokenStream.create "s" (spec 4 ShuffleRows 3UL) (distinctDocs 20 5) |> orFailTest
            let p = TokenStream.advance s (TokenStream.start s) (s.Rows * 3L + 2L)
            Expect.equal (Position.ofInt64s (Position.toInt64s p)) (Ok p) "int64 round trip"
            Expect.equal (Position.ofJson (Position.toJson p)) (Ok p) "JSON round trip"
            let big = { p with Stream = UInt64.MaxValue - 5UL; Row = Int64.MaxValue / 3L }
            Expect.equal (Position.ofInt64s (Position.toInt64s big)) (Ok big) "full uint64 fingerprint survives"
            Expect.equal (Position.ofJson (Position.toJson big)) (Ok big) "and in JSON"
            Expect.isError (Position.ofInt64s [| 1L; 0L; -1L; 0L |]) "negative epoch"
            Expect.isError (Position.ofJson "{\"epoch\": 1}") "missing fields"
            Expect.equal (TokenStream.check s p) (Ok p) "own position accepted"
            let other = TokenStream.create "o" (spec 4 ShuffleRows 4UL) (distinctDocs 20 5) |> orFailTest
            match TokenStream.check other p with
            | Ok _ -> failtest "accepted a position of another stream"
            | Error m -> Expect.stringContains m "another stream" "message" }

        test "a corpus shorter than one row is refused, naming it" {
            match TokenStream.create "--train-text tiny.txt" (spec 16 InOrder 0UL) [| [| 1; 2; 3 |]; [| 1; 4 |] |] with
            | Ok _ -> failtest "accepted 5 tokens for rows of 17"
            | Error e -> Expect.stringContains (InputError.describe e) "--train-text tiny.txt: gives 5 tokens, fewer than one row of 17" "message" }

        test "document splits: parts disjoint, together the corpus, empty parts refused" {
            let docs = [| for y in [ 1790; 1850; 1901; 1989; 1990; 2001; 2021 ] -> doc $"{y}_someone.txt" $"address {y}" |]
            let split = DocumentSplit.apply "sotu" (NamesFrom "1990") docs |> orFailTest
            Expect.equal (split.Train |> Array.map (fun d -> d.Name.Substring(0, 4))) [| "1790"; "1850"; "1901"; "1989" |] "before 1990"
            Expect.equal (split.HeldOut |> Array.map (fun d -> d.Name.Substring(0, 4))) [| "1990"; "2001"; "2021" |] "from 1990"
            for rule in [ NamesFrom "1990"; LastDocuments 2; EveryKth 3 ] do
                let sp = DocumentSplit.apply "sotu" rule docs |> orFailTest
                let names (ds: Document[]) = ds |> Array.map (fun d -> d.Name) |> Set.ofArray
                Expect.isTrue (Set.intersect (names sp.Train) (names sp.HeldOut)).IsEmpty $"{rule}: disjoint"
                Expect.equal (Set.union (names sp.Train) (names sp.HeldOut)) (names docs) $"{rule}: covers the corpus"
            Expect.equal ((DocumentSplit.apply "s" (EveryKth 3) docs |> orFailTest).HeldOut |> Array.map (fun d -> d.Name.Substring(0, 4))) [| "1901"; "2001" |] "every third"
            Expect.isError (DocumentSplit.apply "s" (NamesFrom "2100") docs) "nothing held out"
            Expect.isError (DocumentSplit.apply "s" (NamesFrom "0") docs) "nothing left to train"
            Expect.isError (DocumentSplit.apply "s" (LastDocuments 1) (Array.append docs [| docs[0] |])) "repeated name"
            let repeated = Array.append docs [| doc "2022_x.txt" "address 1850" |]
            Expect.equal (DocumentSplit.apply "s" (NamesFrom "1990") repeated |> orFailTest).RepeatedTexts 1 "a held-out text seen in training is counted" }

        test "sources: story files split at the marker, plain text whole, folders by relative path" {
            let dir = Path.Combine(Path.GetTempPath(), "tc-docs-" + Guid.NewGuid().ToString "N")
            Directory.CreateDirectory(Path.Combine(dir, "sub")) |> ignore
            File.WriteAllText(Path.Combine(dir, "b.txt"), "one<|endoftext|>two\n<|endoftext|>")
            File.WriteAllText(Path.Combine(dir, "a.txt"), "  whole <|endoftext|> file  ")
            File.WriteAllText(Path.Combine(dir, "sub", "c.txt"), "third")
            let names src = Documents.read src |> orFailTest |> Array.map (fun d -> d.Name, d.Text)
            Expect.equal (names (Stories(Path.Combine(dir, "b.txt")))) [| "b.txt#0", "one"; "b.txt#1", "two" |] "stories"
            Expect.equal (names (PlainText(Path.Combine(dir, "a.txt")))) [| "a.txt", "whole <|endoftext|> file" |] "plain text"
            Expect.equal (names (TextFolder dir)) [| "a.txt#0", "whole"; "a.txt#1", "file"; "b.txt#0", "one"; "b.txt#1", "two"; "sub/c.txt", "third" |] "folder"
            Expect.isError (Documents.read (TextFolder(Path.Combine(dir, "missing")))) "missing folder" }

        test "State of the Union (corpora/ from setup): addresses before 1990 train, later ones are held out" {
            let corpora = Path.Combine(Shared.repoRoot, "corpora")
            let src = NpmCorpora.stateOfTheUnion corpora
            match src with
            | TextFolder p when not (Directory.Exists p) -> skiptest $"needs {p} (run: dotnet fsi build.fsx setup); skipped"
            | _ -> ()
            let docs = Documents.read src |> orFailTest
            let split = DocumentSplit.apply "sotu" (NamesFrom "1990") docs |> orFailTest
            Expect.isTrue (split.Train |> Array.forall (fun d -> int (d.Name.Substring(0, 4)) < 1990)) "train before 1990"
            Expect.isTrue (split.HeldOut |> Array.forall (fun d -> int (d.Name.Substring(0, 4)) >= 1990)) "held out from 1990"
            Expect.equal (split.Train.Length + split.HeldOut.Length) docs.Length "every address in one part" }
    ]
