/// An exclusive lock on an output directory, so two runs writing into the same directory cannot interleave
/// their files (weights of one run, settings of the other). The lock is an OS file lock on DIR/.taylor-calibrate.lock
/// (released by the OS if the process dies, so a crashed run leaves no stale lock); who holds it is written
/// beside it, for the error message of a second writer.
module TaylorCalibrate.Pipeline.Io.DirectoryLock

open System
open System.IO

/// The lock file's name inside a locked directory.
let lockName = ".taylor-calibrate.lock"
/// The file naming the holder (process id, host, start time, command).
let holderName = ".taylor-calibrate.lock.holder"

/// Whether a directory entry is one of the lock's own files (not output of a run).
let isLockFile (path: string) =
    let n = Path.GetFileName path
    n = lockName || n = holderName

/// A held lock; dispose to release it and remove its files.
type Held internal (dir: string, stream: FileStream) =
    member _.Directory = dir
    interface IDisposable with
        member _.Dispose() =
            (try File.Delete(Path.Combine(dir, holderName)) with _ -> ())
            stream.Dispose()

/// Takes the lock of `dir` (created if absent), or says who holds it.
let acquire (dir: string) (what: string) : Result<Held, string> =
    Directory.CreateDirectory dir |> ignore
    let path = Path.Combine(dir, lockName)
    try
        // FileShare.None is an exclusive, non-blocking OS lock (flock on Unix): a second opener fails at once.
        let s = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose)
        let holder = $"process {Environment.ProcessId} on {Environment.MachineName} since {DateTime.UtcNow:u} ({what})"
        File.WriteAllText(Path.Combine(dir, holderName), holder)
        Ok(new Held(dir, s))
    with :? IOException ->
        let holder = try File.ReadAllText(Path.Combine(dir, holderName)).Trim() with _ -> "another process"
        Error $"{dir} is locked by {holder}; wait for it to finish or choose another directory"
