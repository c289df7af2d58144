/// What every command shares: how a user-fixable error leaves the program (one line, exit code 2), and
/// opening the backend named by --device.
module TaylorCalibrate.Cli.Common

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline

/// A user-fixable problem: printed as one line, exit code 2, no stack trace (unless --verbose).
exception UsageError of string

/// Stops the command with a one-line error and exit code 2.
let usageError (msg: string) : 'a = raise (UsageError msg)

/// Unwraps a loader result, turning an InputError into a usage error.
let orFail (r: Result<'a, InputError>) : 'a =
    match r with
    | Ok v -> v
    | Error e -> usageError (InputError.describe e)

/// Opens the backend of a --device option (default auto).
let openDevice (spec: string option) : IBackend =
    try Devices.Open(defaultArg spec "auto")
    with :? DeviceException as e -> usageError e.Message
