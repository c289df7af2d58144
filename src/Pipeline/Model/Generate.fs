/// Autoregressive sampling for quick sanity checks: greedy at temperature 0, else softmax(z/T) sampling
/// from a seeded generator. Recomputes the whole window each step (no KV cache): simple and exact.
module TaylorCalibrate.Pipeline.Model.Generate

open System

/// The index of the largest value of row `row` (length V) of `values` (first on ties).
let argmax (values: float32[]) (row: int) (V: int) =
    let mutable best = 0
    for i in 1 .. V - 1 do
        if values[row * V + i] > values[row * V + best] then best <- i
    best

/// Draws from softmax(z / temperature) of one row.
let sample (rng: Random) (values: float32[]) (row: int) (V: int) (temperature: float) =
    let z = Array.init V (fun i -> float values[row * V + i] / temperature)
    let m = Array.max z
    let p = z |> Array.map (fun x -> exp (x - m))
    let u = rng.NextDouble() * Array.sum p
    let mutable acc = 0.0
    let mutable pick = V - 1
    let mutable i = 0
    while i < V do
        acc <- acc + p[i]
        if u < acc then
            pick <- i
            i <- V
        i <- i + 1
    pick

/// Continues `prompt` (non-empty ids) by `steps` tokens; the window slides once it reaches the context.
/// `onToken` sees each new id as it is produced.
let run (m: DeviceDecoder) (prompt: int[]) (steps: int) (temperature: float) (seed: int) (onToken: int -> unit) : int[] =
    if prompt.Length = 0 then invalidArg "prompt" "generation needs at least one prompt id (e.g. BOS)"
    let V = m.Config.Vocab
    let rng = Random seed
    let ids = Collections.Generic.List<int>(prompt)
    for _ in 1 .. steps do
        let window = ids.GetRange(max 0 (ids.Count - m.Config.Context), min ids.Count m.Config.Context).ToArray()
        let logits = Decoder.logits m window 1 window.Length
        let last = window.Length - 1
        let next = if temperature <= 0.0 then argmax logits last V else sample rng logits last V temperature
        ids.Add next
        onToken next
    ids.GetRange(prompt.Length, steps).ToArray()
