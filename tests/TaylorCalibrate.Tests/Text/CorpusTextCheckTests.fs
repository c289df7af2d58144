/// Where a text stops being clean UTF-8 (Corpus.textProblemIn): the first invalid sequence or NUL byte,
/// by byte offset; valid multi-byte text is clean.
module TaylorCalibrate.Tests.Text.CorpusTextCheckTests

open System.Text
open Expecto
open TaylorCalibrate.Pipeline.Text

[<Tests>]
let tests =
    testList "Text.Corpus text check" [
        test "valid multi-byte UTF-8 is clean" {
            Expect.equal (Corpus.textProblemIn (Encoding.UTF8.GetBytes "héllo — 日本 🐱")) None "clean"
        }
        test "the first invalid byte is found by offset" {
            let b = Array.concat [ Encoding.UTF8.GetBytes "héllo"; [| 0xc3uy; 0x28uy |]; [| 0xffuy |] ]
            // "héllo" is 6 bytes; 0xc3 0x28 is a lead byte without its continuation.
            Expect.equal (Corpus.textProblemIn b) (Some(6L, "invalid UTF-8")) "offset of the broken sequence"
        }
        test "a NUL byte marks binary data" {
            let b = Array.concat [ Encoding.UTF8.GetBytes "abc"; [| 0uy |]; [| 0xffuy |] ]
            Expect.equal (Corpus.textProblemIn b |> Option.map fst) (Some 3L) "the NUL comes first"
        }
    ]
