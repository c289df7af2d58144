/// Benchmark plumbing shared by every suite: timing (median of repeats after warm-up, wall clock around the
/// op plus a device synchronisation, so both backends are measured the same way) and the JSON record format
/// {suite, device, case, m, n, k, seconds, gflops, tokens_per_s} (fields that do not apply omitted).
module TaylorCalibrate.Pipeline.Bench.BenchCore

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open TaylorCalibrate.Backend

/// One measured case.
type BenchRecord =
    { Suite: string
      Device: string
      Case: string
      M: int option
      N: int option
      K: int option
      /// Median seconds per repetition.
      Seconds: float
      Gflops: float option
      TokensPerSecond: float option }

/// How long to measure.
type BenchOptions =
    { /// Untimed runs first (pipeline creation, JIT, caches).
      Warmup: int
      /// At least this many timed runs...
      MinRepeats: int
      /// ...and more until this much time has been spent (bounded by MaxRepeats).
      MinSeconds: float
      MaxRepeats: int
      /// Smaller shapes, for slow devices (lavapipe) and smoke runs.
      Quick: bool }

let defaultOptions = { Warmup = 1; MinRepeats = 3; MinSeconds = 1.0; MaxRepeats = 25; Quick = false }

/// Median wall seconds of `action` followed by `be.Synchronize()`.
let measure (be: IBackend) (opts: BenchOptions) (action: unit -> unit) =
    for _ in 1 .. opts.Warmup do
        action ()
        be.Synchronize()
    let times = Collections.Generic.List<float>()
    let total = Stopwatch.StartNew()
    while times.Count < opts.MinRepeats || (total.Elapsed.TotalSeconds < opts.MinSeconds && times.Count < opts.MaxRepeats) do
        let sw = Stopwatch.StartNew()
        action ()
        be.Synchronize()
        times.Add sw.Elapsed.TotalSeconds
    let sorted = times |> Seq.sort |> Array.ofSeq
    let n = sorted.Length
    if n % 2 = 1 then sorted[n / 2] else 0.5 * (sorted[n / 2 - 1] + sorted[n / 2])

/// Writes records as a JSON list, atomically.
/// One x·Wᵀ GEMM of M×N×K with constant operands, as a record of `suite`: the reference rate a model's FLOP
/// rate is read against in the same run (`what` says which projection it stands for).
let projectionGemm (be: IBackend) (opts: BenchOptions) (suite: string) (what: string) (M: int) (N: int) (K: int) =
    use a = be.Allocate [| M; K |]
    use b = be.Allocate [| N; K |]
    use c = be.Allocate [| M; N |]
    be.Fill(a, 0.5f)
    be.Fill(b, 0.25f)
    let spec = GemmSpec(M, N, K, TransB = true)
    let seconds = measure be opts (fun () -> be.Gemm(a, b, c, spec))
    { Suite = suite; Device = be.Name; Case = $"gemm x·Wᵀ {M}x{N}x{K} ({what})"
      M = Some M; N = Some N; K = Some K; Seconds = seconds; Gflops = Some(spec.Flops / seconds / 1e9); TokensPerSecond = None }

let writeJson (path: string) (records: BenchRecord seq) =
    TaylorCalibrate.Pipeline.Io.AtomicFile.write path (fun s ->
        use w = new Utf8JsonWriter(s, JsonWriterOptions(Indented = true))
        w.WriteStartArray()
        for r in records do
            w.WriteStartObject()
            w.WriteString("suite", r.Suite)
            w.WriteString("device", r.Device)
            w.WriteString("case", r.Case)
            r.M |> Option.iter (fun v -> w.WriteNumber("m", v))
            r.N |> Option.iter (fun v -> w.WriteNumber("n", v))
            r.K |> Option.iter (fun v -> w.WriteNumber("k", v))
            w.WriteNumber("seconds", r.Seconds)
            r.Gflops |> Option.iter (fun v -> w.WriteNumber("gflops", Math.Round(v, 3)))
            r.TokensPerSecond |> Option.iter (fun v -> w.WriteNumber("tokens_per_s", Math.Round(v, 1)))
            w.WriteEndObject()
        w.WriteEndArray()
        w.Flush())

/// Reads records written by `writeJson` (for comparisons in scripts and tests).
let readJson (path: string) : BenchRecord list =
    use doc = JsonDocument.Parse(File.ReadAllText path)
    [ for e in doc.RootElement.EnumerateArray() ->
        let opt (name: string) (f: JsonElement -> 'a) =
            let mutable v = Unchecked.defaultof<JsonElement>
            if e.TryGetProperty(name, &v) then Some(f v) else None
        { Suite = e.GetProperty("suite").GetString()
          Device = e.GetProperty("device").GetString()
          Case = e.GetProperty("case").GetString()
          M = opt "m" (fun v -> v.GetInt32())
          N = opt "n" (fun v -> v.GetInt32())
          K = opt "k" (fun v -> v.GetInt32())
          Seconds = e.GetProperty("seconds").GetDouble()
          Gflops = opt "gflops" (fun v -> v.GetDouble())
          TokensPerSecond = opt "tokens_per_s" (fun v -> v.GetDouble()) } ]
