/// Data-parallel training over the ranks of an MPI job (docs/architecture.md "Scale-out"): every rank reads the
/// same global batch from the token stream (so the stream position, and every checkpoint, is the same on all
/// ranks) and trains on its share of the rows; after the micro-batches the gradients are summed over ranks in
/// rank order (ICollectives.SumInRankOrder), so every rank applies the same update to the same parameters.
/// Rank r's rows carry the weight (its rows / all rows), which makes the sum the full-batch mean gradient:
/// the same as one process with the same global batch up to float32 summation order.
module TaylorCalibrate.Pipeline.Parallel.DataParallel

open System
open System.Text
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline.Training

/// Rank r's rows of a global batch of `rows`: (first row, count). `rows` must be a multiple of the rank count.
let shardRows (ranks: ICollectives) (rows: int) : int * int =
    if rows % ranks.Size <> 0 then invalidArg "rows" $"{rows} rows do not split evenly over {ranks.Size} ranks"
    let n = rows / ranks.Size
    ranks.Rank * n, n

/// Sums the gradients over ranks in rank order through host memory (one buffer in parameter order): the
/// allreduce of a step moves 4 bytes per trained parameter.
let sumGradients (ranks: ICollectives) (be: IBackend) (grads: Tensor list) =
    if ranks.Size > 1 then
        let total = grads |> List.sumBy (fun g -> g.Count)
        let buffer = Array.zeroCreate<float32> (int total)
        let mutable at = 0
        for g in grads do
            be.Download(g, Span(buffer, at, int g.Count))
            at <- at + int g.Count
        ranks.SumInRankOrder(Span buffer)
        at <- 0
        for g in grads do
            be.Upload(g, ReadOnlySpan(buffer, at, int g.Count))
            at <- at + int g.Count

/// The `combine` of Trainer.stepWeightedThen for a data-parallel step: sums the trained gradients and the
/// step's loss over ranks. Each rank's loss is its rows' mean times its share `fraction` (rows / all rows).
let combineStep (ranks: ICollectives) (optimizer: AdamW) (fraction: float) : float -> float =
    fun localLoss ->
        if ranks.Size = 1 then localLoss
        else
            let grads = optimizer.Trained |> List.map (fun t -> t.Parameter.Grad)
            sumGradients ranks (grads.Head.Backend) grads
            ranks.SumInRankOrder(localLoss * fraction)

let private encode (settings: Map<string, string>) =
    settings |> Map.toSeq |> Seq.map (fun (k, v) -> k + "\u0000" + v) |> String.concat "\u0001" |> Encoding.UTF8.GetBytes

let private decode (bytes: byte[]) =
    let text = Encoding.UTF8.GetString bytes
    if text = "" then Map.empty
    else text.Split '\u0001' |> Array.map (fun kv -> let p = kv.Split '\u0000' in p[0], p[1]) |> Map.ofArray

/// Rank `root`'s text on every rank (its length, then its UTF-8 bytes): how rank 0 tells the others what it
/// decided (an output directory taken or refused, the layers a resume restores).
let broadcastText (ranks: ICollectives) (root: int) (text: string) : string =
    if ranks.Size = 1 then text else
    let mine = Encoding.UTF8.GetBytes text
    let length = BitConverter.GetBytes(if ranks.Rank = root then mine.Length else 0)
    ranks.Broadcast(Span length, root)
    let bytes = if ranks.Rank = root then mine else Array.zeroCreate (BitConverter.ToInt32(length, 0))
    ranks.Broadcast(Span bytes, root)
    Encoding.UTF8.GetString bytes

/// Checks at start that every rank runs with the settings of rank 0 (one collective round, every rank gets
/// the same answer). Error: which ranks differ and on which setting, with both values.
let agree (ranks: ICollectives) (settings: Map<string, string>) : Result<unit, string> =
    if ranks.Size = 1 then Ok() else
    let mine = encode settings
    let length = BitConverter.GetBytes(if ranks.Rank = 0 then mine.Length else 0)
    ranks.Broadcast(Span length, 0)
    let root = if ranks.Rank = 0 then mine else Array.zeroCreate (BitConverter.ToInt32(length, 0))
    ranks.Broadcast(Span root, 0)
    let rootSettings = decode root
    // Indexed by rank 0's keys, which every rank now has; a key only this rank has is index Count.
    let rootKeys = rootSettings |> Map.toArray |> Array.map fst
    let firstDifference =
        match rootKeys |> Array.tryFindIndex (fun k -> rootSettings.TryFind k <> settings.TryFind k) with
        | Some i -> Some i
        | None -> if settings.Count > rootSettings.Count then Some rootKeys.Length else None
    // Every rank learns every rank's first differing key (index + 1; 0 = agrees): small integers, exact in
    // float32. So whichever rank's message reaches the user first names the setting.
    let votes = Array.zeroCreate<float32> ranks.Size
    votes[ranks.Rank] <- float32 (match firstDifference with Some i -> i + 1 | None -> 0)
    ranks.SumInRankOrder(Span votes)
    match votes |> Array.tryFindIndex (fun v -> v > 0f) with
    | None -> Ok()
    | Some r ->
        let i = int votes[r] - 1
        if i = rootKeys.Length then
            Error $"rank {r} runs with a setting that rank 0 does not have; every rank must get the same options"
        else
            let k = rootKeys[i]
            let describe (m: Map<string, string>) = match m.TryFind k with Some v -> $"'{v}'" | None -> "(absent)"
            if ranks.Rank = r then
                Error $"rank {r} disagrees with rank 0 on setting '{k}': {describe settings} here, {describe rootSettings} on rank 0"
            else
                Error $"rank {r} disagrees with rank 0 on setting '{k}' ({describe rootSettings} on rank 0); every rank must get the same options"
