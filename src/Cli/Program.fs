module TaylorCalibrate.Cli.Program

[<EntryPoint>]
let main argv =
    printfn "taylor-calibrate: under construction"
    0
