/// The backends every kernel test runs on: the CPU backend always, and Vulkan on lavapipe (or any Vulkan
/// device named by TC_TEST_VULKAN, e.g. "vulkan:0") when a Vulkan loader and device exist.
module TaylorCalibrate.Tests.Backends

open System
open Expecto
open TaylorCalibrate.Backend

/// The Vulkan device spec tests use: TC_TEST_VULKAN, else the lavapipe CPU driver.
let vulkanSpec =
    match Environment.GetEnvironmentVariable "TC_TEST_VULKAN" with
    | null | "" -> "vulkan:llvmpipe"
    | s -> s

/// One backend shared by all tests of a run, opened on first use (device creation costs ~0.3 s).
type BackendHandle(name: string, opener: unit -> IBackend) =
    let value = lazy (try Ok(opener ()) with e -> Error e.Message)
    member _.Name = name
    /// The backend, or a skip naming why it is unavailable.
    member _.Get() : IBackend =
        match value.Value with
        | Ok b -> b
        | Error why -> skiptest $"{name} backend unavailable: {why}"
    member _.IsOpen = value.IsValueCreated
    member _.Dispose() = if value.IsValueCreated then match value.Value with Ok b -> b.Dispose() | _ -> ()

let cpu = BackendHandle("cpu", fun () -> Devices.Open "cpu")
let vulkan = BackendHandle("vulkan", fun () -> Devices.Open vulkanSpec)

/// Both backends, for `for be in Backends.all do ...` test lists.
let all = [ cpu; vulkan ]

/// Runs `f` with tensors made from the arrays and disposes them afterwards.
let useTensors (be: IBackend) (arrays: (float32[] * int[]) list) (f: Tensor list -> 'a) : 'a =
    let ts = arrays |> List.map (fun (a, shape) -> be.FromArray(a, shape))
    try f ts finally for t in ts do t.Dispose()

/// Expects `f` to throw an ArgumentException whose message names `tensor` (as a whole word) and contains
/// `shapeText` (the offending tensor's shape, e.g. "[4,7]"; pass "" to skip that part).
let expectArgumentError (tensor: string) (shapeText: string) (f: unit -> unit) (what: string) =
    let named (msg: string) = Text.RegularExpressions.Regex.IsMatch(msg, @"(^|\W)" + Text.RegularExpressions.Regex.Escape tensor + @"(\W|$)")
    try
        f ()
        failtest $"{what}: no exception (expected an ArgumentException naming '{tensor}')"
    with
    | :? ArgumentException as e ->
        if not (named e.Message) then failtest $"{what}: the message does not name tensor '{tensor}': {e.Message}"
        if shapeText <> "" && not (e.Message.Contains shapeText) then
            failtest $"{what}: the message does not give the shape {shapeText}: {e.Message}"
