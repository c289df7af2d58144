/// Where the shared real data lives (../shared next to the repository), and how tests that need it skip.
module TaylorCalibrate.Tests.Shared

open System.IO
open Expecto

/// The repository root (the folder with TaylorCalibrate.sln), found upwards from the test binary.
let repoRoot =
    let rec up (d: DirectoryInfo) =
        if isNull d then failwith "TaylorCalibrate.sln not found above the test binary"
        elif File.Exists(Path.Combine(d.FullName, "TaylorCalibrate.sln")) then d.FullName
        else up d.Parent
    up (DirectoryInfo System.AppContext.BaseDirectory)

/// ../shared beside the repository (models, data); absent on a fresh clone elsewhere.
let sharedDir = Path.GetFullPath(Path.Combine(repoRoot, "..", "shared"))

/// A path under ../shared, or a skip with a message saying what is missing.
let requireShared (relative: string) =
    let p = Path.Combine(sharedDir, relative)
    if not (File.Exists p || Directory.Exists p) then
        skiptest $"needs {p} (the shared real data beside the repository); skipped"
    p
