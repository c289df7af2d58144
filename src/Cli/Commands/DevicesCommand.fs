/// `taylor-calibrate devices`: every Vulkan device and the CPU backend, marking the `auto` choice.
module TaylorCalibrate.Cli.DevicesCommand

open Argu
open Spectre.Console
open TaylorCalibrate.Backend

type Args =
    | Json
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Json -> "print the list as JSON"

let private gib (b: int64) = if b <= 0L then "-" else $"%.1f{float b / float (1L <<< 30)} GiB"

let run (args: ParseResults<Args>) =
    let list = Devices.List()
    let entries, problem = list.Entries, Option.ofObj list.VulkanProblem
    if args.Contains Json then
        let items =
            entries |> Seq.map (fun e ->
                {| id = e.Id; name = e.Info.Name; kind = e.Info.Kind; vendor = e.Info.Vendor; driver = e.Info.Driver
                   memory_bytes = e.Info.MemoryBytes; subgroup_size = e.Info.SubgroupSize; details = e.Info.Details
                   auto = e.IsAuto |})
        printfn "%s" (System.Text.Json.JsonSerializer.Serialize(items, System.Text.Json.JsonSerializerOptions(WriteIndented = true)))
    else
        let table = Table()
        for c in [ "device"; "name"; "type"; "vendor"; "driver"; "memory"; "subgroup/SIMD"; "details"; "auto" ] do
            table.AddColumn c |> ignore
        for e in entries do
            let i = e.Info
            table.AddRow([| e.Id; i.Name; i.Kind; i.Vendor; i.Driver; gib i.MemoryBytes; string i.SubgroupSize; i.Details; (if e.IsAuto then "*" else "") |]
                         |> Array.map Markup.Escape) |> ignore
        AnsiConsole.Write table
        match problem with
        | Some p -> printfn "Vulkan: %s" p
        | None -> ()
        printfn "`--device auto` picks the row marked *; CPU-type Vulkan drivers (lavapipe) are used only when named, e.g. --device vulkan:llvmpipe."
    0
