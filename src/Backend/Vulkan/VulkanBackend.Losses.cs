// Softmax and the vocabulary losses on the Vulkan backend (docs/kernels.md §4): softmax*.comp (row kernels) and
// xent.comp (cross-entropy MODE 0, KL MODE 1), streamed over the vocabulary with an online log-sum-exp, one
// workgroup per row, so no [N, V] temporary exists and the gradient may overwrite the logits in place.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of xent.comp.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct LossArgs
{
    public uint Rows, V;
    public float GradScale;
    public uint HasGrad;
}

public sealed partial class VulkanBackend
{
    const uint LossWg = 128;

    /// <inheritdoc />
    public void Softmax(Tensor x, Tensor y, int cols)
    {
        var vx = F32(x, "x");
        var vy = F32(y, "y");
        int rows = Check.Rows(vx, "x", cols);
        Check.SameCount(vx, "x", vy, "y");
        if (rows == 0) return;
        RowLaunch("softmax", [RowWg], [Read(vx, "x"), Write(vy, "y")], (uint)rows, (uint)cols);
    }

    /// <inheritdoc />
    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, int cols)
    {
        var vy = F32(y, "y");
        var vdy = F32(dy, "dy");
        var vdx = F32(dx, "dx");
        int rows = Check.Rows(vy, "y", cols);
        Check.SameCount(vy, "y", vdy, "dy");
        Check.SameCount(vy, "y", vdx, "dx");
        if (rows == 0) return;
        RowLaunch("softmax_back", [RowWg], [Read(vy, "y"), Read(vdy, "dy"), Write(vdx, "dx")], (uint)rows, (uint)cols);
    }

    /// <inheritdoc />
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor? dlogits, float gradScale)
    {
        var vz = F32(logits, "logits");
        var vt = I32(targets, "targets");
        var vl = F32(loss, "loss");
        Check.That(vz.Rank >= 1 && vz.Dim(-1) > 0, $"tensor 'logits' {vz.ShapeText} must be [N,V] with V > 0");
        int v = vz.Dim(-1);
        int rows = Check.Rows(vz, "logits", v);
        Check.That(vt.Count == rows, $"tensor 'targets' {vt.ShapeText} must have {rows} elements (one per row of logits)");
        Check.That(vl.Count == rows, $"tensor 'loss' {vl.ShapeText} must have {rows} elements (one per row of logits)");
        CheckIds(vt, "targets", v, negativeOk: true, $"'logits' {vz.ShapeText}");
        var vd = dlogits is null ? null : F32(dlogits, "dlogits");
        if (vd is not null) Check.SameCount(vz, "logits", vd, "dlogits");
        if (rows == 0) return;
        var z = Read(vz, "logits");
        var (x, y) = Grid(rows);
        Launch("xent", [LossWg, 0], [z, z, Read(vt, "targets"), vd is null ? z : Write(vd, "dlogits"), Write(vl, "loss")],
            new LossArgs { Rows = (uint)rows, V = (uint)v, GradScale = gradScale, HasGrad = vd is null ? 0u : 1u }, x, y);
    }

    /// <inheritdoc />
    public void KlDivergence(Tensor teacher, Tensor student, Tensor loss, Tensor? dstudent, float gradScale)
    {
        var vt = F32(teacher, "teacher");
        var vs = F32(student, "student");
        var vl = F32(loss, "loss");
        Check.That(vt.Rank >= 1 && vt.Dim(-1) > 0, $"tensor 'teacher' {vt.ShapeText} must be [N,V] with V > 0");
        Check.SameCount(vt, "teacher", vs, "student");
        int v = vt.Dim(-1);
        int rows = Check.Rows(vt, "teacher", v);
        Check.That(vl.Count == rows, $"tensor 'loss' {vl.ShapeText} must have {rows} elements (one per row)");
        var vd = dstudent is null ? null : F32(dstudent, "dstudent");
        if (vd is not null) Check.SameCount(vt, "teacher", vd, "dstudent");
        if (rows == 0) return;
        var s = Read(vs, "student");
        var (x, y) = Grid(rows);
        Launch("xent", [LossWg, 1], [Read(vt, "teacher"), s, s, vd is null ? s : Write(vd, "dstudent"), Write(vl, "loss")],
            new LossArgs { Rows = (uint)rows, V = (uint)v, GradScale = gradScale, HasGrad = vd is null ? 0u : 1u }, x, y);
    }
}
