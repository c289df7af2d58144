// Tokenizer speed on long single documents (no <|endoftext|>): encodes the first N characters of a text
// with a tokenizer and prints the best wall time of a few runs.
//   dotnet fsi tools/tokenize-bench.fsx TOKENIZER TEXT SIZE... [--runs R] [--dump FILE]
// --dump writes the ids of each size, one per line, to FILE.SIZE (to compare two builds' outputs).
// TOKENIZER is a llama2.c .bin or a tokenizer.json; SIZE is a character count (100000) or "all".
// Build first: dotnet build src/Pipeline -c Release. To time another build of the pipeline, point the #r
// lines below at its output folder.
#r "../src/Pipeline/bin/Release/net10.0/TaylorCalibrate.Backend.dll"
#r "../src/Pipeline/bin/Release/net10.0/TaylorCalibrate.Pipeline.dll"

open System
open System.Diagnostics
open System.IO
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text

let args = fsi.CommandLineArgs |> Array.skip 1
let option name = Array.tryFindIndex ((=) name) args |> Option.map (fun i -> args[i + 1])
let runs = option "--runs" |> Option.map int |> Option.defaultValue 3
let dump = option "--dump"
let positional =
    let rec strip (a: string list) = match a with o :: _ :: rest when o.StartsWith "--" -> strip rest | x :: rest -> x :: strip rest | [] -> []
    strip (List.ofArray args) |> Array.ofList
if positional.Length < 3 then failwith "usage: tokenize-bench.fsx TOKENIZER TEXT SIZE... [--runs R]"
let tokPath, textPath = positional[0], positional[1]
let tok : ITokenizer =
    if tokPath.EndsWith ".json" then ByteLevelBpe.load tokPath |> Result.map (fun t -> t :> ITokenizer)
    else Tok512.load tokPath |> Result.map (fun t -> t :> ITokenizer)
    |> Result.defaultWith (fun e -> failwith (InputError.describe e))
let text = File.ReadAllText(textPath).Replace("<|endoftext|>", "")
printfn "%s on %s (%d chars available), best of %d" tok.Description textPath text.Length runs
for size in positional[2..] do
    let n = if size = "all" then text.Length else min text.Length (int size)
    let doc = text.Substring(0, n)
    let times =
        [ for _ in 1 .. runs do
            let sw = Stopwatch.StartNew()
            let ids = tok.Encode(doc, true)
            sw.Stop()
            yield sw.Elapsed.TotalSeconds, ids.Length ]
    let best, count = times |> List.minBy fst
    dump |> Option.iter (fun f -> File.WriteAllLines($"{f}.{n}", tok.Encode(doc, true) |> Array.map string))
    printfn "%9d chars  %8d tokens  %8.3f s" n count best
