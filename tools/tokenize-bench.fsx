// Tokenizer speed on long single documents (no <|endoftext|>): encodes the first N characters of a text
// with a tokenizer and prints the best wall time of a few runs.
//   dotnet fsi tools/tokenize-bench.fsx TOKENIZER TEXT SIZE... [--runs R]
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
let runs = match Array.tryFindIndex ((=) "--runs") args with Some i -> int args[i + 1] | None -> 3
let positional = match Array.tryFindIndex ((=) "--runs") args with Some i -> Array.append args[.. i - 1] args[i + 2 ..] | None -> args
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
    printfn "%9d chars  %8d tokens  %8.3f s" n count best
