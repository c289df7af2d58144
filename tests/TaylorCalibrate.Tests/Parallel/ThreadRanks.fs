/// Ranks as threads of one process (tests only): the ICollectives contract of MpiWorld — sums in rank order,
/// broadcast, barrier — over shared arrays and a System.Threading.Barrier, so data-parallel training can be
/// tested without an MPI installation. Each rank adds the ranks' copies in order 0, 1, … itself, which is the
/// same arithmetic as MpiWorld's owner of a slice.
module TaylorCalibrate.Tests.Parallel.ThreadRanks

open System
open System.Threading
open TaylorCalibrate.Backend.Mpi

type private Group(size: int) =
    member val Barrier = new Barrier(size)
    member val Slots : obj[] = Array.zeroCreate size

type private Rank(group: Group, rank: int, size: int) =
    let exchange (mine: obj) =
        group.Slots[rank] <- mine
        group.Barrier.SignalAndWait()
        let all = Array.copy group.Slots
        // Nobody overwrites a slot before everyone has read it.
        group.Barrier.SignalAndWait()
        all
    interface ICollectives with
        member _.Rank = rank
        member _.Size = size
        member _.SumInRankOrder(data: Span<float32>) =
            let all = exchange (box (data.ToArray())) |> Array.map unbox<float32[]>
            for i in 0 .. data.Length - 1 do
                let mutable s = all[0][i]
                for r in 1 .. size - 1 do s <- s + all[r][i]
                data[i] <- s
        member _.SumInRankOrder(value: float) =
            exchange (box value) |> Array.map unbox<float> |> Array.fold (+) 0.0
        member _.Broadcast(data: Span<byte>, root: int) =
            let all = exchange (box (data.ToArray()))
            (unbox<byte[]> all[root]).AsSpan().CopyTo data
        member _.Barrier() = group.Barrier.SignalAndWait()

/// Runs `body rank` on `size` threads, one per rank, and returns their results in rank order (rethrows the
/// first failure).
let run (size: int) (body: ICollectives -> 'r) : 'r list =
    let group = Group size
    let results : Result<'r, exn>[] = Array.create size (Error(Exception "not run"))
    let threads =
        [ for r in 0 .. size - 1 ->
            Thread((fun () -> results[r] <- (try Ok(body (Rank(group, r, size))) with e -> Error e)), 8 * 1024 * 1024) ]
    for t in threads do t.Start()
    for t in threads do t.Join()
    results |> Array.map (function Ok v -> v | Error e -> raise e) |> List.ofArray
