/// Tokenizers: a tiny hand-made tokenizer.json (Llama-3 layout: split regex + ByteLevel, BOS template,
/// special tokens) checks merges, round trips, special tokens and BOS; the real tok512.bin (when ../shared
/// is present) checks the llama2.c rules: BOS, dummy prefix, byte fallback, decoding.
module TaylorCalibrate.Tests.Model.TokenizerTests

open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

let llama3Pattern =
    @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

/// Byte alphabet (ids 0..255 in byte order) plus these merges (ids from 256 in order), then two special tokens.
let merges = [ "Ġ", "t"; "h", "e"; "Ġt", "he"; "l", "l"; "o", "w"; "Ġ", "a" ]

let tinyTokenizerJson () =
    let vocab = JsonObject()
    for b in 0 .. 255 do vocab[string ByteLevelBpe.byteToChar[b]] <- JsonValue.Create b
    merges |> List.iteri (fun i (a, b) -> vocab[a + b] <- JsonValue.Create(256 + i))
    let n = 256 + merges.Length
    let model = JsonObject()
    model["type"] <- JsonValue.Create "BPE"
    model["vocab"] <- vocab
    model["merges"] <- JsonArray([| for a, b in merges -> JsonValue.Create(a + " " + b) :> JsonNode |])
    model["ignore_merges"] <- JsonValue.Create false
    let pattern = (JsonValue.Create llama3Pattern).ToJsonString()
    let root = JsonObject.Parse($"""{{
      "added_tokens": [ {{"id": {n}, "content": "<|begin_of_text|>", "special": true}},
                        {{"id": {n + 1}, "content": "<|endoftext|>", "special": true}} ],
      "normalizer": null,
      "pre_tokenizer": {{"type": "Sequence", "pretokenizers": [
          {{"type": "Split", "pattern": {{"Regex": {pattern}}}, "behavior": "Isolated", "invert": false}},
          {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}} ]}},
      "post_processor": {{"type": "TemplateProcessing",
          "single": [ {{"SpecialToken": {{"id": "<|begin_of_text|>", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}} ]}},
      "decoder": {{"type": "ByteLevel"}}
    }}""")
    root["model"] <- model
    root.ToJsonString()

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "tc-tok-" + System.Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

let private orFailTest r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))

/// A config that differs from any tokenizer here only in its vocabulary.
let private configWithVocab v =
    { Family = ModelFamily.Llama; Dim = 8; Hidden = 8; Layers = 1; Heads = 1; KvHeads = 1; HeadDim = 8; Vocab = v
      Context = 16; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = TaylorCalibrate.Backend.RopeLayout.Adjacent
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

/// The tiny tokenizer with edits to its JSON (Qwen's NFC normaliser, Llama-3's ignore_merges, ...).
let tinyTokenizerWith (edit: JsonNode -> unit) : ITokenizer * string =
    let dir = tempDir ()
    let path = Path.Combine(dir, "tokenizer.json")
    let root = JsonNode.Parse(tinyTokenizerJson ())
    edit root
    File.WriteAllText(path, root.ToJsonString())
    let tok = ByteLevelBpe.load path |> orFailTest
    tok :> ITokenizer, path

let tinyTokenizer () = tinyTokenizerWith ignore

let private byteId (c: char) = int c  // ASCII printable bytes map to themselves in the byte alphabet

let private tok512 () =
    let path = Shared.requireShared "models/stories260K/tok512.bin"
    Tok512.load path |> orFailTest :> ITokenizer

[<Tests>]
let tests =
    testList "Tokenizers" [
        test "byte-level BPE: merges by rank inside pre-tokens, BOS from the template" {
            let tok, _ = tinyTokenizer ()
            // " the" is one pre-token: Ġ t h e → Ġt, he → Ġthe (merge ranks 0, 1, 2).
            Expect.equal (tok.Encode(" the", false)) [| 258 |] "Ġthe"
            Expect.equal (tok.Encode("the", false)) [| byteId 't'; 257 |] "t he"
            Expect.equal (tok.Encode("hello the", false)) [| 257; 259; byteId 'o'; 258 |] "he ll o Ġthe"
            Expect.equal (tok.Encode("the", true)[0]) 262 "BOS <|begin_of_text|> first"
            Expect.equal tok.DocumentStart (Some 262) "document start"
            Expect.equal tok.VocabSize 264 "vocab size counts added tokens" }

        test "byte-level BPE: special tokens are split out, decode drops them" {
            let tok, _ = tinyTokenizer ()
            Expect.equal (tok.Encode("a<|endoftext|> a", false)) [| byteId 'a'; 263; 261 |] "a, <|endoftext|>, Ġa"
            Expect.equal (tok.Decode [| 262; byteId 'a'; 263; 261 |]) "a a" "specials dropped" }

        test "byte-level BPE: round trips unicode, digits, newlines and spaces byte-exactly" {
            let tok, _ = tinyTokenizer ()
            for s in [ "Hello, world!"; "  two  spaces\n\nand lines\r\n"; "naïve café — 日本語 🙂"; "1234567 it's I'M"; "" ] do
                Expect.equal (tok.Decode(tok.Encode(s, false))) s $"round trip of {s}" }

        test "byte-level BPE: an NFC normaliser is accepted and leaves NFC text as is; ignore_merges takes whole words" {
            // The runtime is built with InvariantGlobalization, where String.Normalize does not compose, so
            // decomposed input ("e" + U+0301) is not composed here (see ByteLevelBpe.fs); NFC input is exact.
            let nfc, _ = tinyTokenizerWith (fun root -> root["normalizer"] <- JsonNode.Parse """{"type": "NFC"}""")
            let plain, _ = tinyTokenizer ()
            Expect.equal (nfc.Encode("caf\u00e9 the", false)) (plain.Encode("caf\u00e9 the", false)) "NFC text unchanged"
            // "Ġthe" is in the vocabulary; with ignore_merges it is taken whole even if merges would not build it.
            let whole, _ =
                tinyTokenizerWith (fun root ->
                    root["model"]["ignore_merges"] <- JsonValue.Create true
                    root["model"]["merges"] <- JsonArray())
            Expect.equal (whole.Encode(" the", false)) [| 258 |] "whole word from the vocabulary"
            Expect.equal (whole.Encode("the", false)) [| byteId 't'; byteId 'h'; byteId 'e' |] "no merges otherwise" }

        test "tokenizer.json: bad files give one-line errors naming the file" {
            let dir = tempDir ()
            let p = Path.Combine(dir, "tokenizer.json")
            File.WriteAllText(p, """{"model": {"type": "Unigram", "vocab": []}}""")
            match ByteLevelBpe.load p with
            | Ok _ -> failtest "accepted a Unigram tokenizer"
            | Error e -> Expect.stringContains (InputError.describe e) "Unigram" "names the model type" }

        test "tokenizer larger than the model's vocabulary is rejected" {
            let tok, path = tinyTokenizer ()
            let c = configWithVocab 100
            match ModelFiles.checkVocab tok path c with
            | Ok _ -> failtest "accepted a 264-token tokenizer for a 100-token model"
            | Error e -> Expect.stringContains (InputError.describe e) "264 tokens but the model's vocabulary has 100" "message" }

        test "tok512: BOS, dummy prefix, empty text" {
            let tok = tok512 ()
            Expect.equal tok.VocabSize 512 "512 pieces"
            Expect.equal (tok.Encode("", true)) [| 1 |] "empty text is just BOS"
            Expect.equal (tok.Encode("", false)) [||] "no BOS, nothing"
            let ids = tok.Encode("Once upon a time", true)
            Expect.equal ids[0] 1 "BOS first"
            Expect.stringStarts (tok.Piece ids[1]) " " "the dummy-prefix space is merged into the first piece"
            Expect.equal (tok.Decode ids) "Once upon a time" "decode drops the space after BOS" }

        test "tok512: byte fallback for code points without a piece, decoded back" {
            let tok = tok512 ()
            let ids = tok.Encode("日", false)
            // " " then the three UTF-8 bytes E6 97 A5 as <0xE6> <0x97> <0xA5> = 3 + byte.
            Expect.equal ids[ids.Length - 3 ..] [| 3 + 0xE6; 3 + 0x97; 3 + 0xA5 |] "byte-fallback ids"
            Expect.equal (tok.Decode(Array.append [| 1 |] ids)) "日" "decoded back"
            for s in [ "Lily and Ben went to the park. \"Wow!\" said Ben."; "Zoë's café: 42 €"; "a\nb\tc" ] do
                Expect.equal (tok.Decode(tok.Encode(s, true))) s $"round trip of {s}" }

        test "tok512: the model's vocabulary must match the tokenizer's exactly" {
            let tok = tok512 ()
            let c = configWithVocab 32000
            match ModelFiles.checkVocab tok "tok512.bin" c with
            | Ok _ -> failtest "accepted tok512 for a 32000-token model"
            | Error e -> Expect.stringContains (InputError.describe e) "512 tokens" "message" }
    ]
