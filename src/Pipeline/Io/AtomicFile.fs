/// Writes files atomically: the content goes to a temporary file beside the target, which is renamed over
/// the target only when complete, so an interrupted run never leaves a half-written output.
module TaylorCalibrate.Pipeline.Io.AtomicFile

open System
open System.IO

/// Calls `write` on a stream to a temporary file next to `path`, then renames it to `path`.
/// On any exception the temporary file is deleted and the target is left untouched.
let write (path: string) (write: Stream -> unit) =
    let full = Path.GetFullPath path
    let dir = Path.GetDirectoryName full
    if not (String.IsNullOrEmpty dir) then Directory.CreateDirectory dir |> ignore
    let tmp = Path.Combine(dir, $".{Path.GetFileName full}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp")
    try
        do
            use fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 <<< 20)
            write fs
            fs.Flush(true)
        File.Move(tmp, full, true)
    with _ ->
        (try File.Delete tmp with _ -> ())
        reraise ()

/// Atomically writes text (UTF-8, no BOM).
let writeText (path: string) (text: string) =
    write path (fun s ->
        let bytes = Text.UTF8Encoding(false).GetBytes text
        s.Write(bytes, 0, bytes.Length))
