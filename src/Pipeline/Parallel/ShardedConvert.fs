/// A conversion sharded over the ranks of an MPI job (docs/architecture.md "Scale-out"). Every rank traces
/// the teacher (the same host data everywhere), then aligns its share of the converted layers — the k-th
/// layer still to align goes to rank k mod N — and persists each under OUT/align exactly as a resumable
/// single-process conversion does (Stages/AlignCheckpoint.fs). After a barrier rank 0 converts with every
/// aligned layer restored from those files: restoring is bit-exact, so the student is bit-identical to a
/// one-process run. OUT must be a directory every rank sees (a shared filesystem on a cluster).
module TaylorCalibrate.Pipeline.Parallel.ShardedConvert

open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Stages.TeacherTrace

/// The layers rank `rank` of `size` aligns out of those still to align (in layer order).
let share (rank: int) (size: int) (toAlign: int list) : int list =
    toAlign |> List.indexed |> List.filter (fun (k, _) -> k % size = rank) |> List.map snd

/// Runs the conversion as one rank: Some result on rank 0, None on the others. `hooks.LayerAligned` must
/// persist a layer into `out` (AlignCheckpoint.save) and `hooks.Resume` know the layers restored before the
/// run started. A strategy without alignment runs on rank 0 alone.
let run (ranks: ICollectives) (out: string) (workers: DeviceWorker list) (teacher: Teacher) (trace: TeacherTrace) (dev: TeacherTrace option)
        (kept: int list) (o: Convert.ConvertOptions) (hooks: Convert.Hooks) (ct: CancellationToken)
        : (Student * Convert.LayerReport list * Map<int, string>) option =
    if ranks.Size = 1 then Some(Convert.runOnWorkers workers teacher trace dev kept o hooks ct)
    else
        if Convert.InitStrategy.aligns o.Strategy then
            let converted = [ 0 .. teacher.Config.Layers - 1 ] |> List.except kept
            let toAlign = converted |> List.filter (fun i -> (hooks.Resume i).IsNone)
            Convert.convertLayers workers teacher trace dev kept o hooks ct (share ranks.Rank ranks.Size toAlign)
        ranks.Barrier()
        if ranks.Rank <> 0 then None
        else
            let aligned =
                if not (Convert.InitStrategy.aligns o.Strategy) then Map.empty
                else
                    let converted = [ 0 .. teacher.Config.Layers - 1 ] |> List.except kept
                    match AlignCheckpoint.resumeFrom out converted with
                    | Ok(restored, _) -> restored
                    | Error e -> invalidOp $"the aligned layers of the other ranks cannot be read back from {out}: {e}"
            let restoring = { hooks with Resume = (fun i -> match aligned.TryFind i with Some r -> Some r | None -> hooks.Resume i) }
            Some(Convert.runOnWorkers workers teacher trace dev kept o restoring ct)
