// Byte-level BPE training speed: trains a vocabulary of N on the first MB megabytes of a text source
// (a file, or every *.txt under a folder) and writes OUT/tokenizer.json.
//   dotnet fsi tools/bpe-train-bench.fsx SOURCE MB N OUT
// Build first: dotnet build src/Pipeline -c Release.
#r "../src/Pipeline/bin/Release/net10.0/TaylorCalibrate.Backend.dll"
#r "../src/Pipeline/bin/Release/net10.0/TaylorCalibrate.Pipeline.dll"

open System.Diagnostics
open System.IO
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text

let a = fsi.CommandLineArgs |> Array.skip 1
if a.Length <> 4 then failwith "usage: bpe-train-bench.fsx SOURCE MB N OUT"
let docs = Corpus.readDocuments a[0] |> Result.defaultWith (fun e -> failwith (InputError.describe e))
let budget = int64 (float a[1] * 1e6)
let taken = docs |> List.scan (fun acc (d: string) -> acc + int64 d.Length) 0L |> List.tail |> List.zip docs |> List.takeWhile (fun (_, n) -> n <= budget) |> List.map fst
let chars = taken |> List.sumBy (fun d -> int64 d.Length)
let sw = Stopwatch.StartNew()
let counts = BpeTrainer.countPreTokens taken
let tCount = sw.Elapsed.TotalSeconds
let t = BpeTrainer.trainOnCounts (int a[2]) None counts
let tAll = sw.Elapsed.TotalSeconds
Directory.CreateDirectory a[3] |> ignore
BpeTrainer.save (Path.Combine(a[3], "tokenizer.json")) t
printfn "%d documents, %d chars, %d distinct pre-tokens: counting %.2f s, %d merges %.2f s, total %.2f s"
    taken.Length chars counts.Count tCount t.Merges.Length (tAll - tCount) tAll
