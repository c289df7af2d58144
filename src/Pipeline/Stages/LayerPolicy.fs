/// Which layers keep softmax attention (docs/method.md §6): an explicit list, or the Uniform policy
/// ⌊i·L/k⌋, i = 0..k−1, with k = max(1, round(f·L)) [project]. Validation of user lists lives here too.
module TaylorCalibrate.Pipeline.Stages.LayerPolicy

open System
open TaylorCalibrate.Pipeline

/// The number of kept layers for a fraction f of L (at least one).
let keptCount (layers: int) (fraction: float) = max 1 (int (Math.Round(fraction * float layers, MidpointRounding.AwayFromZero)))

/// Uniform policy for k kept layers: ⌊i·L/k⌋ for i = 0..k−1 (k clamped to 1..L).
let uniformCount (layers: int) (k: int) : int list =
    let k = max 1 (min layers k)
    [ for i in 0 .. k - 1 -> i * layers / k ]

/// Uniform policy for a fraction f of L: every 4th layer from 0 at 25 %.
let uniform (layers: int) (fraction: float) : int list = uniformCount layers (keptCount layers fraction)

/// Checks a kept-layer list against L layers: in range, no duplicates, not every layer. Returns it sorted.
let validate (option: string) (layers: int) (kept: int list) : Result<int list, InputError> =
    match kept |> List.tryFind (fun i -> i < 0 || i >= layers) with
    | Some i -> Error(InvalidOption(option, $"layer {i} is out of range; the teacher has layers 0..{layers - 1}"))
    | None ->
    match kept |> List.countBy id |> List.tryFind (fun (_, n) -> n > 1) with
    | Some(i, _) -> Error(InvalidOption(option, $"layer {i} is listed twice"))
    | None ->
    if List.length kept >= layers then Error(InvalidOption(option, $"keeps all {layers} layers; nothing would be converted"))
    else Ok(List.sort kept)

/// Parses "0,3" into a list.
let parse (option: string) (text: string) : Result<int list, InputError> =
    let parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    let parsed = parts |> Array.map (fun p -> match Int32.TryParse p with | true, v -> Some v | _ -> None)
    if parsed.Length = 0 then Error(InvalidOption(option, $"'{text}' names no layer; give the indices of the kept layers, e.g. 0,3"))
    elif parsed |> Array.exists Option.isNone then Error(InvalidOption(option, $"'{text}' is not a comma-separated list of layer indices"))
    else Ok(parsed |> Array.choose id |> List.ofArray)
